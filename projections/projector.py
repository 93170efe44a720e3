"""`arx projector` keeps lineage.db folded from the log for as long as it runs; `arx replay` rebuilds
it from the first event into a fresh file and swaps that in (see lineage_file.py for how).

A running projector needs no restart: it notices the swap within a second (or at its next batch),
reopens the path and goes on from the new file's checkpoint. Whatever it wrote into the old file
after the swap is lost with that file, and read again from the log.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sqlite3
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from bus.connection import Bus, StoredMessage
from bus.eventfile import read_line_blocks
from bus.logs import setup_logging
from bus.settings import load_settings
from projections.follow import BUS_ERRORS, RETRY_S, log_retry
from projections.lineage import Lineage, OutdatedLineage, Rebuild
from projections.lineage_file import LineageFile, flushed_meanwhile

log = logging.getLogger("arx.projector")

# Besides the log's failures, a projector outlives its file's (locked by a long reader, disk full):
# the batch in flight is rolled back, and it starts again from its checkpoint.
TRANSIENT_ERRORS = (*BUS_ERRORS, sqlite3.OperationalError)
WATCH_S = 1.0
CLOSE_TIMEOUT_S = 5.0
REPLAY_BATCH = 2000  # events a replay reads at a time (it writes them all at the end)
CORRUPT = ("SQLITE_NOTADB", "SQLITE_CORRUPT")  # the file is no lineage database, or a damaged one


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
        bus = await Bus.connect(role="reader", name="arx-projector")
        try:
            try:
                file.open()
                file.close()
            except OutdatedLineage as exc:  # an upgrade: the log has every fact, so the new schema is a replay away
                log.warning("%s: rebuilding it", exc)
                await replay(bus.read(batch=REPLAY_BATCH), path)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_until_signalled, tg.cancel_scope)
                await project(bus, file)
        finally:
            await _close(bus)


def cli_follow_arguments(parser) -> None:
    parser.add_argument("--db", help="lineage database (default: $ARX_HOME/lineage.db)")


def cli_follow(args) -> int:
    setup_logging()
    path = db_path(args)
    with _clear_sqlite_errors(path):
        anyio.run(_follow_main, path)
    return 0


@contextlib.contextmanager
def _clear_sqlite_errors(path: Path):
    """SQLite's failures as one line that names the file; a file that is no database says how to rebuild it."""
    try:
        yield
    except (sqlite3.Error, ExceptionGroup) as exc:
        error = _first(exc, sqlite3.Error)
        if error is None:
            raise
        if getattr(error, "sqlite_errorname", "") in CORRUPT:
            raise RuntimeError(f"{path} is corrupt ({error}): `arx replay` rebuilds it from the log") from None
        raise RuntimeError(f"{path}: {error}") from None


def _first(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in exc, looking into exception groups (a task group wraps what it raises)."""
    if isinstance(exc, BaseExceptionGroup):
        return next((found for inner in exc.exceptions if (found := _first(inner, kind)) is not None), None)
    return exc if isinstance(exc, kind) else None


@dataclass(frozen=True)
class Replayed:
    applied: int
    skipped: int
    last_seq: int
    seconds: float

    @property
    def rate(self) -> float:
        return (self.applied + self.skipped) / self.seconds if self.seconds > 0 else 0.0


async def replay(batches: AsyncIterable[list[StoredMessage]], path: Path) -> Replayed:
    """Rebuild the lineage from `batches` (the stream from sequence 1, or an event file) into a fresh
    file beside `path`, then swap it in."""
    file = LineageFile(path)
    built = file.new_build()
    try:
        with _without_cyclic_gc(), flushed_meanwhile(built):
            result = await _fold_all(batches, built)
        file.swap_in(built)
    except BaseException:
        built.unlink(missing_ok=True)
        raise
    return result


@contextlib.contextmanager
def _without_cyclic_gc():
    """A replay makes millions of short-lived objects without cycles: the cyclic collector would walk
    them again and again (a twentieth of a replay's time) and free none."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def _fold_all(batches: AsyncIterable[list[StoredMessage]], built: Path) -> Replayed:
    # In this thread: folding in a thread of its own, beside the reads, took a half more CPU time
    # (the two fought over the GIL) and no less wall time. nats-server fills the socket meanwhile.
    began = time.perf_counter()
    lineage = Lineage(built, durable=False)  # fsynced once, by swap_in
    try:
        rebuild = Rebuild(lineage)
        async for batch in batches:
            rebuild.add(batch)
        rebuild.finish()
        return Replayed(rebuild.applied, sum(lineage.skipped().values()), lineage.checkpoint,
                        time.perf_counter() - began)
    finally:
        lineage.close()


async def file_batches(path: Path) -> AsyncIterator[list[StoredMessage]]:
    """An event file as replay batches, seq = line number; a file records no subjects (see StoredMessage)."""
    for lines in read_line_blocks(path):
        for i in range(0, len(lines), REPLAY_BATCH):
            yield [StoredMessage(number, None, data) for number, data in lines[i : i + REPLAY_BATCH]]


@contextlib.contextmanager
def _no_projector(path: Path):
    """A file replay's checkpoint counts lines, not stream sequences: no projector may go on from it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(LineageFile(path).sole_writer())
        except RuntimeError:
            raise RuntimeError(f"a projector follows {path}: replay the file into another --db") from None
        yield


async def _replay_main(path: Path, from_file: Path | None) -> Replayed:
    if from_file is not None:
        with _no_projector(path):
            return await replay(file_batches(from_file), path)
    bus = await Bus.connect(role="reader", name="arx-replay")
    try:
        return await replay(bus.read(batch=REPLAY_BATCH), path)
    finally:
        await _close(bus)


def cli_replay_arguments(parser) -> None:
    parser.add_argument("--db", help="lineage database to replace (default: $ARX_HOME/lineage.db)")
    parser.add_argument("--from-file", metavar="FILE", help="rebuild from this event file instead of the stream")


def cli_replay(args) -> int:
    path = db_path(args)
    from_file = Path(args.from_file) if getattr(args, "from_file", None) else None
    if from_file is not None and not from_file.is_file():
        raise ValueError(f"{from_file}: no such event file")
    with _clear_sqlite_errors(path):
        result = anyio.run(_replay_main, path, from_file)
    # The path is now a symbolic link to the fresh file (see lineage_file.py): name both.
    print(
        f"replayed {result.applied + result.skipped} events up to seq {result.last_seq} into {path.resolve()} "
        f"(linked from {path}): {result.applied} applied, {result.skipped} skipped, {result.seconds:.2f}s "
        f"({result.rate:,.0f} events/s)"
    )
    return 0
