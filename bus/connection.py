"""One connection to the event log: publish, read, look up, and the object store for large bytes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from bus import subjects
from bus.events import Event, ObjectRef, decode, encode
from bus.pull_reader import PullReader, StoredMessage
from bus.roles import check_seed
from bus.server import ensure_server
from bus.settings import Settings, load_settings

log = logging.getLogger("arx.bus")

WRONG_SETUP = "was made by an older arx, which let a subject hold several facts"
CONNECT_TIMEOUT_S = 10.0
SUBJECT_TAKEN = 10077  # JetStream: the subject already holds its one message (max_msgs_per_subject=1)
_REFUSED = re.compile(r'permissions violation for (?:publish|subscription) to "([^"]+)"', re.IGNORECASE)


class Refused(PermissionError):
    """nats-server refused this role a subject: one line that names both."""

    def __init__(self, role: str, subject: str):
        super().__init__(f"nats-server refused role {role!r} publishing to {subject}: that role may not write it")


class Bus:
    def __init__(self, nc, settings: Settings, role: str, *, seed: Path | None = None,
                 refused: set[str] | None = None):
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.settings = settings
        self.role = role
        self.seed = seed  # the credential it connected with, for the stream reader's own connection
        self.refused = set() if refused is None else refused  # subjects nats-server refused it (error callback)
        self._objects = None

    @classmethod
    async def connect(cls, settings: Settings | None = None, *, role: str, name: str = "arx") -> "Bus":
        """Connect as one of bus.roles.ROLES with that role's credential; the stream must exist.

        A server that refuses the credential, or that does not speak NATS, is a one-line RuntimeError
        rather than a retry loop: reconnecting is for servers that were once there."""
        settings = settings or load_settings()
        url = await asyncio.to_thread(ensure_server, settings)
        seed = settings.seed(role)
        if seed is not None:
            check_seed(seed)
        refused: set[str] = set()
        first_error = asyncio.get_running_loop().create_future()

        async def on_error(exc: Exception) -> None:
            if match := _REFUSED.search(str(exc)):
                refused.add(match.group(1))
            elif not connecting.done():  # the first one is the reason connecting fails; the rest follow from it
                if not first_error.done():
                    first_error.set_result(exc)
            else:
                log.warning("nats: %s", exc)

        connecting = asyncio.ensure_future(nats.connect(
            url, name=name, nkeys_seed=str(seed) if seed else None, error_cb=on_error,
            max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=CONNECT_TIMEOUT_S,
        ))
        await asyncio.wait({connecting, first_error}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            reason = first_error.result() if first_error.done() else f"no answer within {CONNECT_TIMEOUT_S:.0f}s"
            credential = f"credential {seed}" if seed else "no credential"
            raise RuntimeError(f"cannot connect to {url} as role {role!r} ({credential}): {reason}")
        bus = cls(connecting.result(), settings, role, seed=seed, refused=refused)
        try:
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

    def stream_config(self) -> api.StreamConfig:
        return api.StreamConfig(
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

    async def provision(self) -> None:
        """Create the stream and the object store (admin only; every other role finds them made)."""
        try:
            await self.js.stream_info(self.settings.stream)
        except NotFoundError:
            await self.js.add_stream(self.stream_config())
        await self.check_stream()
        await self.objects()

    async def check_stream(self) -> None:
        """Refuse a stream whose rules do not hold the log's promises; a missing one says who makes it."""
        try:
            info = await self.js.stream_info(self.settings.stream)
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

    async def publish(self, event: Event, *, attempts: int = 3) -> bool:
        """Publish once, whatever the retries; True when the stream holds this event on its subject.

        Each subject holds one fact (bus.subjects), so False means another writer's event got there
        first: for an outcome, that one is the trial's outcome.
        """
        event.check_subject()
        return await self.publish_bytes(event.subject, encode(event), event.event_id, attempts=attempts)

    async def publish_bytes(self, subject: str, payload: bytes, event_id: str, *, attempts: int = 3) -> bool:
        """Publish an already encoded event as it is (an import keeps the recorded bytes); see publish."""
        headers = {"Nats-Msg-Id": event_id}
        for attempt in range(attempts):
            try:
                ack = await self.js.publish(subject, payload, headers=headers, timeout=5)
            except APIError as exc:
                if exc.err_code != SUBJECT_TAKEN:
                    raise
                return await self._holds(subject, payload)  # ours from a retried publish, or a rival's
            except NatsTimeout:
                if subject in self.refused:
                    raise Refused(self.role, subject) from None
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
            else:
                # A duplicate id inside the window: ours, unless a rival sent the same id first.
                return not ack.duplicate or await self._holds(subject, payload)
        return False

    async def _holds(self, subject: str, payload: bytes) -> bool:
        try:
            stored = await self.js.get_last_msg(self.settings.stream, subject)
        except NotFoundError:
            return False
        return stored.data == payload

    # -- reading ----------------------------------------------------------------------------

    async def last_seq(self) -> int:
        info = await self.js.stream_info(self.settings.stream)
        return info.state.last_seq

    async def last_event(self, subject: str) -> Event | None:
        """The latest event on one subject (direct get), or None when there is none."""
        try:
            msg = await self.js.get_last_msg(self.settings.stream, subject)
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
            filter_subject=subject,
        )
        consumer = await self.js.add_consumer(self.settings.stream, config)
        url = self.nc.connected_url
        if url is None:
            raise nats.errors.ConnectionClosedError()
        reader = await PullReader.open(url, seed=self.seed)
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
        await self.js.add_consumer(self.settings.stream, config)
        return await self.js.pull_subscribe_bind(durable=name, stream=self.settings.stream)

    # -- object store -----------------------------------------------------------------------

    async def objects(self):
        if self._objects is None:
            try:
                self._objects = await self.js.object_store(self.settings.object_bucket)
            except NotFoundError:
                self._objects = await self.js.create_object_store(self.settings.object_bucket)
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
