"""One connection to the event log: publish, read, look up, and the object store for large bytes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from bus.events import Event, ObjectRef, decode, encode
from bus.pull_reader import PullReader, StoredMessage
from bus.server import ensure_server
from bus.settings import Settings, load_settings

SUBJECTS = "arx.ev.>"
WRONG_LAST_SEQUENCE = 10071  # JetStream's answer when Nats-Expected-Last-Subject-Sequence does not hold


class Bus:
    def __init__(self, nc, settings: Settings):
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.settings = settings
        self._objects = None

    @classmethod
    async def connect(cls, settings: Settings | None = None, *, name: str = "arx") -> "Bus":
        settings = settings or load_settings()
        url = await asyncio.to_thread(ensure_server, settings)
        nc = await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        bus = cls(nc, settings)
        await bus.ensure_stream()
        return bus

    async def close(self) -> None:
        await self.nc.drain()

    async def __aenter__(self) -> "Bus":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def ensure_stream(self) -> None:
        config = api.StreamConfig(
            name=self.settings.stream,
            subjects=[SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=self.settings.duplicate_window_s,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
        )
        try:
            await self.js.stream_info(self.settings.stream)
        except NotFoundError:
            await self.js.add_stream(config)

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, event: Event, *, first_writer: bool = False, attempts: int = 3) -> bool:
        """Publish once, whatever the retries: Nats-Msg-Id is the event id, so a retry collapses.

        With first_writer, the publish succeeds only if nothing was ever written on the event's
        subject (the one-outcome-per-trial rule); returns False when another writer got there first.
        """
        return await self.publish_bytes(
            event.subject, encode(event), event.event_id, first_writer=first_writer, attempts=attempts
        )

    async def publish_bytes(
        self, subject: str, payload: bytes, event_id: str, *, first_writer: bool = False, attempts: int = 3
    ) -> bool:
        """Publish an already encoded event as it is (an import keeps the recorded bytes); see publish."""
        headers = {"Nats-Msg-Id": event_id}
        if first_writer:
            headers["Nats-Expected-Last-Subject-Sequence"] = "0"
        for attempt in range(attempts):
            try:
                await self.js.publish(subject, payload, headers=headers, timeout=5)
                return True
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                # The subject already has a message: ours from a retried publish, or a rival's.
                last = await self.last_event(subject)
                return last is not None and last.event_id == event_id
            except NatsTimeout:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        return False

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
        self, *, start_seq: int = 1, subject: str = SUBJECTS, batch: int = 1000, follow: bool = False
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
        reader = await PullReader.open(url)
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
