"""`arx projector` keeps lineage.db folded from the log for as long as it runs; `arx replay` rebuilds
it from the first event into a fresh file and swaps that in (see lineage_file.py for how).

A running projector needs no restart: it notices the swap within a second (or at its next batch),
reopens the path and goes on from the new file's checkpoint. Whatever it wrote into the old file
after the swap is lost with that file, and read again from the log.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from bus.connection import Bus
from bus.settings import load_settings
from projections.follow import BUS_ERRORS, RETRY_S, catch_up, log_retry
from projections.lineage import Lineage
from projections.lineage_file import LineageFile

log = logging.getLogger("arx.projector")

# Besides the log's failures, a projector outlives its file's (locked by a long reader, disk full):
# the batch in flight is rolled back, and it starts again from its checkpoint.
TRANSIENT_ERRORS = (*BUS_ERRORS, sqlite3.OperationalError)
WATCH_S = 1.0
CLOSE_TIMEOUT_S = 5.0


def db_path(args) -> Path:
    return Path(args.db) if getattr(args, "db", None) else load_settings().home / "lineage.db"


async def project(bus: Bus, file: LineageFile, *, watch_s: float = WATCH_S) -> None:
    """Fold the log into the file forever (cancel to stop): catch up from its checkpoint, then follow."""
    while True:
        try:
            await _follow_once(bus, file, watch_s)
        except* TRANSIENT_ERRORS as failed:
            log_retry(failed.exceptions[0])
            await anyio.sleep(RETRY_S)


async def _follow_once(bus: Bus, file: LineageFile, watch_s: float) -> None:
    """Open the file and fold new events into it until it is replaced."""
    lineage = file.open()
    log.info("projecting into %s from seq %d", file.path, lineage.checkpoint + 1)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_replaced, file, watch_s, tg.cancel_scope)
            reader = bus.read(start_seq=lineage.checkpoint + 1, follow=True)
            async with contextlib.aclosing(reader):
                async for batch in reader:
                    if file.apply(batch) is None:
                        break
            tg.cancel_scope.cancel()
    finally:
        file.close()
    log.info("%s was replaced; reopening it", file.path)


async def _watch_replaced(file: LineageFile, watch_s: float, scope: anyio.CancelScope) -> None:
    # Without new events the reader never returns: notice a swap by polling the path.
    while not file.replaced():
        await anyio.sleep(watch_s)
    scope.cancel()


async def _until_signalled(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: stopping", signal.Signals(signum).name)
            scope.cancel()
            return


async def _close(bus: Bus) -> None:
    with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
        await bus.close()


async def _follow_main(path: Path) -> None:
    file = LineageFile(path)
    with file.sole_writer():
        bus = await Bus.connect(name="arx-projector")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_until_signalled, tg.cancel_scope)
                await project(bus, file)
        finally:
            await _close(bus)


def cli_follow(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    path = db_path(args)
    with _clear_sqlite_errors(path):
        anyio.run(_follow_main, path)
    return 0


@contextlib.contextmanager
def _clear_sqlite_errors(path: Path):
    try:
        yield
    except sqlite3.Error as exc:
        raise RuntimeError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class Replayed:
    applied: int
    skipped: int
    last_seq: int
    seconds: float

    @property
    def rate(self) -> float:
        return (self.applied + self.skipped) / self.seconds if self.seconds > 0 else 0.0


async def replay(bus: Bus, path: Path) -> Replayed:
    """Rebuild the lineage from sequence 1 into a fresh file beside `path`, then swap it in."""
    file = LineageFile(path)
    built = file.new_build()
    try:
        lineage = Lineage(built, durable=False)  # fsynced once, by swap_in
        try:
            began = time.perf_counter()
            applied = await catch_up(bus, lineage)
            result = Replayed(applied, lineage.counter("skipped"), lineage.checkpoint, time.perf_counter() - began)
        finally:
            lineage.close()
        file.swap_in(built)
    except BaseException:
        built.unlink(missing_ok=True)
        raise
    return result


async def _replay_main(path: Path) -> Replayed:
    bus = await Bus.connect(name="arx-replay")
    try:
        return await replay(bus, path)
    finally:
        await _close(bus)


def cli_replay(args) -> int:
    path = db_path(args)
    with _clear_sqlite_errors(path):
        result = anyio.run(_replay_main, path)
    print(
        f"replayed {result.applied + result.skipped} events up to seq {result.last_seq} into {path}: "
        f"{result.applied} applied, {result.skipped} skipped, {result.seconds:.2f}s ({result.rate:,.0f} events/s)"
    )
    return 0
