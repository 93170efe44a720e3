"""Keep a Lineage in step with the stream: catch up once, or follow for as long as a process lives."""

from __future__ import annotations

import logging

import anyio
import nats.errors

from bus import subjects
from bus.connection import FAILOVER_S, Bus
from projections.lineage import Lineage

log = logging.getLogger("arx.follow")

# The log can fail under a follower (server restarted, its consumer lost): it reads again from its
# own checkpoint, which is always safe.
BUS_ERRORS = (nats.errors.Error, OSError)
RETRY_S = 1.0


async def catch_up(bus: Bus, lineage: Lineage, *, subject: str = subjects.ALL) -> int:
    """Fold everything in the stream now (or only what matches subject); returns events applied.

    A read that fails (a cluster electing a new leader for the stream goes quiet for a few seconds)
    is read again from the checkpoint, for up to FAILOVER_S."""
    applied = 0
    deadline = anyio.current_time() + FAILOVER_S
    while True:
        try:
            async for batch in bus.read(start_seq=lineage.checkpoint + 1, subject=subject):
                applied += lineage.apply(batch)
            return applied
        except BUS_ERRORS as exc:
            if anyio.current_time() > deadline:
                raise
            log_retry(exc)
            await anyio.sleep(RETRY_S)


async def follow(bus: Bus, lineage: Lineage, on_batch=None) -> None:
    """Fold new events as they arrive, forever (cancel the task to stop), through failures of the log."""
    while True:
        try:
            async for batch in bus.read(start_seq=lineage.checkpoint + 1, follow=True):
                lineage.apply(batch)
                if on_batch is not None:
                    on_batch()
        except BUS_ERRORS as exc:
            log_retry(exc)
            await anyio.sleep(RETRY_S)


def log_retry(exc: BaseException) -> None:
    log.warning("%s: %s; reading again from the checkpoint in %.0fs", type(exc).__name__, exc, RETRY_S)


class LiveLineage:
    """An in-process lineage view that a role (agent, evaluator) keeps current in the background."""

    def __init__(self, bus: Bus, lineage: Lineage | None = None):
        self.bus = bus
        self.lineage = lineage or Lineage()
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self) -> None:
        await follow(self.bus, self.lineage, on_batch=self._notify)

    async def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        """Wait until every event up to `seq` is folded; False if that took longer than timeout."""
        with anyio.move_on_after(timeout):
            while self.lineage.checkpoint < seq:
                await self._changed.wait()
            return True
        return False

    async def changed(self, timeout: float) -> None:
        """Return when the next batch is folded or after timeout, whichever comes first."""
        with anyio.move_on_after(timeout):
            await self._changed.wait()
