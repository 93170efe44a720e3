"""One connection to the event log: publish, read, look up, and the object store for large bytes."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from bus import subjects
from bus.events import Event, ObjectRef, decode, encode
from bus.pull_reader import PullReader, StoredMessage
from bus.roles import check_seed
from bus.server import ensure_server, server_urls
from bus.settings import Settings, load_settings
from bus.tls import client_context

log = logging.getLogger("arx.bus")

WRONG_SETUP = "was made by an older arx, which let a subject hold several facts"
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 4.0  # one JetStream request; see FAILOVER_S
# How long a JetStream call (or a catch-up read) is asked again while nobody answers it: a cluster that
# lost a node elects new leaders within seconds, longer on a loaded machine.
FAILOVER_S = 45.0
SUBJECT_TAKEN = 10077  # JetStream: the subject already holds its one message (max_msgs_per_subject=1)
# JetStream on a cluster that is electing leaders after losing a node: "system temporarily unavailable".
CLUSTER_UNAVAILABLE = 10008
_REFUSED = re.compile(r'permissions violation for (?:publish|subscription) to "([^"]+)"', re.IGNORECASE)


class Refused(PermissionError):
    """nats-server refused this role a subject: one line that names both."""

    def __init__(self, role: str, subject: str):
        super().__init__(f"nats-server refused role {role!r} publishing to {subject}: that role may not write it")


class Bus:
    def __init__(self, nc, settings: Settings, role: str, *, seed: Path | None = None,
                 refused: set[str] | None = None, tls: ssl.SSLContext | None = None):
        self.nc = nc
        self.tls = tls  # for the stream reader's own connection
        self.js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        self.settings = settings
        self.role = role
        self.seed = seed  # the credential it connected with, for the stream reader's own connection
        self.refused = set() if refused is None else refused  # subjects nats-server refused it (error callback)
        self._objects = None

    @classmethod
    async def connect(cls, settings: Settings | None = None, *, role: str, name: str = "arx",
                      check: bool = True) -> "Bus":
        """Connect as one of bus.roles.ROLES with that role's credential; the stream must exist (unless
        not `check`: provisioning makes it).

        A server that refuses the credential, or that does not speak NATS, is a one-line RuntimeError
        rather than a retry loop: reconnecting is for servers that were once there."""
        settings = settings or load_settings()
        url = await asyncio.to_thread(ensure_server, settings)
        seed = settings.seed(role)
        if seed is not None:
            check_seed(seed)
        refused: set[str] = set()
        first_error = asyncio.get_running_loop().create_future()
        servers = server_urls(url)
        unreachable = 0

        async def on_error(exc: Exception) -> None:
            nonlocal unreachable
            if match := _REFUSED.search(str(exc)):
                refused.add(match.group(1))
            elif not connecting.done():  # the first one is the reason connecting fails; the rest follow from it
                # A cluster node that is down is no reason to fail while another may answer.
                unreachable += isinstance(exc, ConnectionRefusedError)
                if not first_error.done() and (unreachable >= len(servers) or not isinstance(exc, ConnectionRefusedError)):
                    first_error.set_result(exc)
            else:
                log.warning("nats: %s", exc)

        tls = client_context(settings.tls_ca) if settings.tls_ca or "tls://" in url else None
        connecting = asyncio.ensure_future(nats.connect(
            servers=servers, name=name, tls=tls, nkeys_seed=str(seed) if seed else None, error_cb=on_error,
            max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=CONNECT_TIMEOUT_S,
        ))
        await asyncio.wait({connecting, first_error}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            reason = first_error.result() if first_error.done() else f"no answer within {CONNECT_TIMEOUT_S:.0f}s"
            credential = f"credential {seed}" if seed else "no credential"
            raise RuntimeError(f"cannot connect to {url} as role {role!r} ({credential}): {reason}")
        bus = cls(connecting.result(), settings, role, seed=seed, refused=refused, tls=tls)
        try:
            if check:
                await bus.check_stream()
        except BaseException:
            await bus.nc.close()
            raise
        return bus

    async def close(self) -> None:
        await self.nc.drain()

    async def __aenter__(self) -> "Bus":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def replicas(self) -> int:
        """Copies of the stream and the object store: ARX_REPLICAS, else 3 on a cluster and 1 on one node."""
        return self.settings.replicas or (3 if self.on_cluster() else 1)

    def stream_config(self) -> api.StreamConfig:
        return api.StreamConfig(
            num_replicas=self.replicas(),
            name=self.settings.stream,
            subjects=[subjects.ALL],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=self.settings.duplicate_window_s,
            # One fact per subject, enforced by the server against any client: see bus.subjects.
            max_msgs_per_subject=1,
            discard=api.DiscardPolicy.NEW,
            discard_new_per_subject=True,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
        )

    def on_cluster(self) -> bool:
        return bool(self.nc._server_info.get("cluster"))  # nats-py keeps the server's INFO only here

    async def wait_jetstream(self, timeout: float) -> None:
        """Return once JetStream answers: a cluster that has just formed answers only once its nodes have
        elected a leader (a few seconds), while a lone server without JetStream never will."""
        deadline = asyncio.get_running_loop().time() + timeout
        quick = self.nc.jetstream(timeout=1.0)
        while True:
            try:
                await quick.account_info()
                return
            except (NatsTimeout, asyncio.TimeoutError, ServiceUnavailableError) as exc:
                if not self.on_cluster():
                    raise RuntimeError(f"{self.nc.connected_url.netloc} runs no JetStream: start nats-server with -js") from None
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"the cluster at {self.settings.nats_url} elected no JetStream leader "
                                       f"within {timeout:.0f}s ({exc!r}): are most of its nodes running?") from None
            await asyncio.sleep(0.25)

    async def provision(self) -> None:
        """Create the stream and the object store (admin only; every other role finds them made)."""
        try:
            await self.js.stream_info(self.settings.stream)
        except NotFoundError:
            await self.js.add_stream(self.stream_config())
        await self.check_stream()
        await self.objects()
        for stream in (self.settings.stream, f"OBJ_{self.settings.object_bucket}"):
            await self._replicate(stream)

    async def _replicate(self, stream: str) -> None:
        """Give an existing stream the replica count asked for (a node added to the cluster, or ARX_REPLICAS)."""
        config = (await self.js.stream_info(stream)).config
        if config.num_replicas != self.replicas():
            await self.js.update_stream(dataclasses.replace(config, num_replicas=self.replicas()))

    async def check_stream(self) -> None:
        """Refuse a stream whose rules do not hold the log's promises; a missing one says who makes it."""
        try:
            info = await self._through_failover(self.js.stream_info, self.settings.stream)
        except ServiceUnavailableError:  # nats-py's word for "no responders" to a JetStream call
            raise RuntimeError(f"{self.nc.connected_url.netloc} runs no JetStream: start nats-server with -js") from None
        except NotFoundError:
            if self.role == "admin":
                return  # provision makes it
            raise RuntimeError(
                f"stream {self.settings.stream} does not exist yet: `arx server` (or any admin command) creates it"
            ) from None
        if info.config.max_msgs_per_subject != 1 or not info.config.discard_new_per_subject:
            raise RuntimeError(
                f"stream {self.settings.stream} {WRONG_SETUP}: export its campaigns with that arx and "
                "`arx import` them into a new ARX_HOME"
            )

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, event: Event) -> bool:
        """Publish once, whatever the retries; True when the stream holds this event on its subject.

        Each subject holds one fact (bus.subjects), so False means another writer's event got there
        first: for an outcome, that one is the trial's outcome.
        """
        event.check_subject()
        return await self.publish_bytes(event.subject, encode(event), event.event_id)

    async def publish_bytes(self, subject: str, payload: bytes, event_id: str) -> bool:
        """Publish an already encoded event as it is (an import keeps the recorded bytes); see publish."""
        headers = {"Nats-Msg-Id": event_id}
        try:
            ack = await self._through_failover(self.js.publish, subject, payload, headers=headers, timeout=5)
        except APIError as exc:
            if exc.err_code != SUBJECT_TAKEN:
                raise
            return await self._holds(subject, payload)  # ours from a retried publish, or a rival's
        except NatsTimeout:
            if subject in self.refused:
                raise Refused(self.role, subject) from None
            raise
        # A duplicate id inside the window: ours, unless a rival sent the same id first.
        return not ack.duplicate or await self._holds(subject, payload)

    async def _holds(self, subject: str, payload: bytes) -> bool:
        try:
            stored = await self._through_failover(self.js.get_last_msg, self.settings.stream, subject)
        except NotFoundError:
            return False
        return stored.data == payload

    async def _through_failover(self, call, *args, **kwargs):
        """A JetStream call, made again while nobody answers it: a server restarting, or a cluster electing
        a new leader for the stream after losing a node (a few seconds, during which requests go unanswered)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FAILOVER_S
        while True:
            try:
                return await call(*args, **kwargs)
            except (NatsTimeout, asyncio.TimeoutError, NoStreamResponseError, ServiceUnavailableError) as exc:
                # "No responders" and "temporarily unavailable" are an outage only on a cluster; a lone server
                # that says it runs no JetStream means it.
                unanswered = not isinstance(exc, ServiceUnavailableError) or (
                    exc.err_code in (None, CLUSTER_UNAVAILABLE) and self.on_cluster())
                if not unanswered or loop.time() > deadline or self.refused:
                    raise
                log.info("no answer from JetStream (%s): asking again", type(exc).__name__)
                await asyncio.sleep(0.5)

    # -- reading ----------------------------------------------------------------------------

    async def last_seq(self) -> int:
        info = await self._through_failover(self.js.stream_info, self.settings.stream)
        return info.state.last_seq

    async def last_event(self, subject: str) -> Event | None:
        """The latest event on one subject (direct get), or None when there is none."""
        try:
            msg = await self._through_failover(self.js.get_last_msg, self.settings.stream, subject)
        except NotFoundError:
            return None
        return decode(msg.data)

    async def read(
        self, *, start_seq: int = 1, subject: str = subjects.ALL, batch: int = 1000, follow: bool = False
    ) -> AsyncIterator[list[StoredMessage]]:
        """Yield the log in stream order, in batches, from start_seq.

        Without follow, stops once it has read everything that was in the stream when it began. With
        follow, reads on for as long as the caller iterates, and raises when the server goes away or
        forgets the consumer (the caller reads again from its own checkpoint).
        """
        end = await self.last_seq()
        if not follow and end < start_seq:
            return
        config = api.ConsumerConfig(
            # Named, so that it is created on a subject that carries its name: nats-server's permissions
            # then keep every role from creating (and so replacing) a queue it does not own (bus.roles).
            name=f"read-{uuid.uuid4().hex}",
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=60.0,
            # As many copies as the stream: JetStream places a one-copy cursor on any node, a dead one
            # included, and then keeps a reader waiting until it notices (a minute); in memory, as it is
            # thrown away after the read.
            num_replicas=self.replicas(),
            mem_storage=True,
            filter_subject=subject,
        )
        consumer = await self._through_failover(self.js.add_consumer, self.settings.stream, config)
        url = self.nc.connected_url
        if url is None:
            raise nats.errors.ConnectionClosedError()
        reader = await PullReader.open(url, seed=self.seed, tls=self.tls)
        try:
            async for stored in reader.pull(self.settings.stream, consumer.name, batch=batch, follow=follow, end=end):
                yield stored
        finally:
            reader.close()

    async def durable(self, name: str, subject: str | list[str], *, max_deliver: int | None = None):
        """A shared, load-balanced work queue: every process using `name` splits the messages.

        `subject` may be several subjects; an existing consumer of that name takes the new filter."""
        several = not isinstance(subject, str)
        config = api.ConsumerConfig(
            durable_name=name,
            filter_subject=None if several else subject,
            filter_subjects=list(subject) if several else None,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=max_deliver or self.settings.max_attempts + 1,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        await self._through_failover(self.js.add_consumer, self.settings.stream, config)
        return await self.js.pull_subscribe_bind(durable=name, stream=self.settings.stream)

    # -- object store -----------------------------------------------------------------------

    async def objects(self):
        if self._objects is None:
            try:
                self._objects = await self.js.object_store(self.settings.object_bucket)
            except NotFoundError:
                bucket = self.settings.object_bucket  # nats-py sets the config's bucket from this argument
                self._objects = await self.js.create_object_store(
                    bucket, config=api.ObjectStoreConfig(replicas=self.replicas())
                )
        return self._objects

    async def put_object(self, name: str, data: bytes) -> ObjectRef:
        store = await self.objects()
        await store.put(name, data)
        return ObjectRef(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def get_object(self, ref: ObjectRef) -> bytes:
        store = await self.objects()
        result = await store.get(ref.name)
        data = result.data
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ValueError(f"object {ref.name} does not match its sha256 {ref.sha256[:12]}")
        return data
