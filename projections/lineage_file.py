"""The lineage database file, which `arx replay` swaps while projectors and readers have it open.

SQLite names a database's rollback journal after its path, so renaming a new file over an open one
would let a write still in flight on the old file leave its journal beside the new one, and the next
process to open the new file would roll that journal into the wrong database. So a replayed database
keeps its own name (`lineage.db.replay-XXXX`) and the path becomes a symbolic link to it, replaced
atomically (os.replace). SQLite resolves the link, so every connection journals under its own file's
real name, and a process still on the old file cannot touch the new one; the projector notices the
link moved (another inode at the path) and reopens.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from bus.connection import StoredMessage
from projections.lineage import Lineage

T = TypeVar("T")

REPLAY_INFIX = ".replay-"


def identity(path: Path) -> tuple[int, int] | None:
    """Which file is at the path now (None: none); a swap by replay changes it."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def open_current(path: Path, open_: Callable[[], T], close: Callable[[T], None]) -> tuple[tuple[int, int] | None, T]:
    """open_() on the file now at the path, and that file's identity: the same file at the path before
    and after opening is the file that was opened; a swap in between opens the new one."""
    while True:
        before = identity(path)
        opened = open_()
        if identity(path) == before:
            return before, opened
        close(opened)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def flushed_meanwhile(path: Path, every_s: float = 0.2) -> Iterator[None]:
    """Write `path`'s pages to disk from another thread while the caller goes on writing it, so the
    fsync before it is swapped in finds little left to write (it was a tenth of a replay's time)."""
    done = threading.Event()

    def flush() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            while not done.wait(every_s):
                os.fdatasync(fd)  # releases the GIL: the disk works while the fold goes on
        finally:
            os.close(fd)

    thread = threading.Thread(target=flush, name="lineage-flush", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class LineageFile:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.lineage: Lineage | None = None
        self._opened: tuple[int, int] | None = None

    @contextmanager
    def sole_writer(self) -> Iterator[None]:
        """Held for a projector's life: a second projector on the same file is refused, not raced."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".projector"), "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"another projector is already writing {self.path}") from None
            yield

    def open(self) -> Lineage:
        """Open the file now at the path (creating it if missing); close() before opening again."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._opened, self.lineage = open_current(self.path, lambda: Lineage(self.path), Lineage.close)
        return self.lineage

    def close(self) -> None:
        if self.lineage is not None:
            self.lineage.close()
            self.lineage = None

    def replaced(self) -> bool:
        """True once the path names another file (swapped by replay) or none (deleted)."""
        return identity(self.path) != self._opened

    def apply(self, batch: list[StoredMessage]) -> int | None:
        """Fold a batch into the open file; None when it was replaced (reopen, read again from there)."""
        if self.replaced():
            return None
        return self.lineage.apply(batch)

    def new_build(self) -> Path:
        """An empty file for a replay to build the next database in: beside the path, named for good."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=self.path.name + REPLAY_INFIX, dir=self.path.parent)
        os.close(fd)
        return Path(name)

    def swap_in(self, built: Path) -> None:
        """Point the path at `built`, a closed lineage file from new_build(), in one atomic rename."""
        fsync_path(built)
        previous = self._previous_build()
        if previous is None:
            self._settle_journal()
        link = built.with_name(built.name + ".link")
        os.symlink(built.name, link)
        try:
            os.replace(link, self.path)
        except OSError:
            link.unlink()
            raise
        fsync_path(self.path.parent)
        if previous is not None and previous != built:
            previous.unlink(missing_ok=True)  # a process still on it keeps it open until it moves on

    def _previous_build(self) -> Path | None:
        """The replayed file the path links to now; never a file this module did not build."""
        if not self.path.is_symlink():
            return None
        target = self.path.parent / os.readlink(self.path)
        if target.parent == self.path.parent and target.name.startswith(self.path.name + REPLAY_INFIX):
            return target
        return None

    def _settle_journal(self) -> None:
        # A projector killed mid-batch on a plain file leaves a hot journal named after the path,
        # where it would outlive its file. Opening the file rolls it back now; the journal of a live
        # projector is not hot (it holds SQLite's lock on the file), and SQLite leaves it alone.
        journal = self.path.with_name(self.path.name + "-journal")
        if journal.exists() and self.path.is_file() and not self.path.is_symlink():
            conn = sqlite3.connect(self.path)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                conn.close()
