"""The live lineage.db as a Datasette database: read-only, and current across `arx replay`'s swaps.

Datasette reads a mutable file through connections opened `mode=ro` and kept per thread, but opens the
one it writes through (for plugins, write queries) read-write: here every connection is `mode=ro`, so
SQLite itself refuses any write. Immutable mode (`-i`) is no use for a file the projector keeps
writing: SQLite would never look for its changes.

`arx replay` points the path at a new file (lineage_file.py), while a connection stays on the file it
opened. So each query first checks which file is at the path, and a thread whose connection is on a
replaced file closes it and opens the new one.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from datasette.database import Database

from projections.lineage_file import identity, open_current


class LiveLineage(Database):
    def __init__(self, datasette, path: Path):
        super().__init__(datasette, path=str(path), is_mutable=True)
        self._opened = threading.local()  # this thread's (file identity, connection)

    def connect(self, write: bool = False) -> sqlite3.Connection:
        # Never a connection that can write, even the one Datasette would write through.
        return super().connect(write=False)

    async def execute_fn(self, fn):
        return await asyncio.get_running_loop().run_in_executor(self.ds.executor, lambda: fn(self._connection()))

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection to the file now at the path (only this thread uses it, so it may
        close one left on a replaced file)."""
        path = Path(self.path)
        opened = getattr(self._opened, "file", None)
        if opened is not None:
            if opened[0] == identity(path):
                return opened[1]
            opened[1].close()
        self._opened.file = opened = open_current(path, self.connect, sqlite3.Connection.close)
        self.ds._prepare_connection(opened[1], self.name)
        return opened[1]
