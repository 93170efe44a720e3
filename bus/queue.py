"""Working a durable queue one message at a time: the loop the executors and the evaluators share, and
the heartbeat that keeps a long job's message from being handed to another worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import anyio
import nats.errors

log = logging.getLogger("arx.queue")

FETCH_TIMEOUT_S = 1.0  # also how long a set `stop` may wait to be noticed between messages


async def work(sub, handle: Callable[[object], Awaitable[None]], *, stop: anyio.Event | None = None) -> None:
    """Hand each message of the pull subscription to `handle`, one at a time, until `stop` is set (the
    message in hand is finished first). A message whose handling raises stays unacked: NATS delivers it
    again. The subscription is closed on the way out."""
    try:
        while stop is None or not stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=FETCH_TIMEOUT_S)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nats-py raises either on an empty fetch
                continue
            except (nats.errors.Error, OSError) as exc:  # a reconnect in progress: the messages stay queued
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(FETCH_TIMEOUT_S)
                continue
            for msg in msgs:
                try:
                    await handle(msg)
                except Exception:
                    log.exception("message %d on %s left for redelivery", msg.metadata.sequence.stream, msg.subject)
    finally:
        # Unsubscribed, a half-done fetch cannot hold up the connection's drain on the way out.
        with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


@contextlib.asynccontextmanager
async def heartbeat(msg, interval_s: float):
    """Tell JetStream the message is still being worked on, every interval_s, while the block runs."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await msg.in_progress()
            except Exception as exc:  # a lost heartbeat costs at worst a redelivery
                log.warning("heartbeat failed: %s", exc)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
