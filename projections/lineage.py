"""The lineage projection: fold events into SQLite, one transaction per batch (whose statements run in
bulk, to the same effect as one by one: see bulk.py).

The last applied stream sequence is stored in the same transaction as the rows it produced, so a
crash can make a batch be read again but never applied twice; every statement is also idempotent on
its own (INSERT ... ON CONFLICT, outcome written only while a trial has none).

Files use SQLite's rollback journal, not WAL: `arx replay` swaps files under a running projector and
its readers (see lineage_file.py), and a rollback journal exists only while a batch is written,
where WAL's -wal/-shm files live on beside the file for as long as anyone has it open.
"""

from __future__ import annotations

import ast
import itertools
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import msgspec
import sqlite_utils

from bus.connection import StoredMessage
from bus.events import Event, UnknownEvent, decode
from projections.bulk import Fold, TrialKey, bulk_runs, new_trials
from projections.fold import UPDATED_COLUMNS, Statement, statements

FOLD_CHUNK = 256

# sqlite3 binds a None only after looking for an adapter for it, through two attribute lookups that
# fail with formatted error messages: a tenth of a bulk fold's time. With one registered, that ends
# at a dict lookup. The adapter gives None back, which binds as NULL as before.
sqlite3.register_adapter(type(None), lambda none: none)

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id TEXT PRIMARY KEY, task TEXT, metric TEXT, direction TEXT, max_trials INTEGER,
    arm TEXT, noise REAL, started_at TEXT, started_seq INTEGER, bundle_sha256 TEXT, spec TEXT,
    stopped_at TEXT, stop_reason TEXT
);
CREATE TABLE IF NOT EXISTS specialists (
    campaign_id TEXT, specialist TEXT, surface TEXT, policy TEXT, joined_at TEXT,
    PRIMARY KEY (campaign_id, specialist)
);
CREATE TABLE IF NOT EXISTS trials (
    campaign_id TEXT, trial_id TEXT, proposed_seq INTEGER, specialist TEXT, surface TEXT, policy TEXT,
    parent_id TEXT, hypothesis TEXT, expected_delta REAL, diff TEXT, shown_ids TEXT, params TEXT,
    model TEXT, tokens_in INTEGER, tokens_out INTEGER, latency_s REAL, cost_usd REAL, proposed_at TEXT,
    started_at TEXT, executor TEXT, attempts INTEGER DEFAULT 0,
    finished_at TEXT, commit_sha TEXT, exit_code INTEGER, signal INTEGER, timed_out INTEGER,
    wall_s REAL, peak_rss_mb REAL, log_tail TEXT,
    outcome TEXT, label TEXT, score REAL, metrics TEXT, incumbent_id TEXT, incumbent_score REAL,
    delta REAL, noise REAL, outcome_seq INTEGER, outcome_at TEXT,
    evidence_stage TEXT, evidence_gate TEXT, evidence_measured REAL, evidence_limit REAL,
    evidence_frame TEXT, evidence_message TEXT,
    PRIMARY KEY (campaign_id, trial_id)
);
CREATE INDEX IF NOT EXISTS trials_by_outcome ON trials (campaign_id, outcome_seq);
CREATE INDEX IF NOT EXISTS trials_by_parent ON trials (campaign_id, parent_id, proposed_seq);
CREATE INDEX IF NOT EXISTS trials_by_specialist ON trials (campaign_id, specialist, outcome_seq);
-- The incumbent and the top kept trials (views.incumbent, the agents' lineage view).
CREATE INDEX IF NOT EXISTS trials_by_label ON trials (campaign_id, label, score);
-- What a campaign's LLM calls have cost so far (the cost cap): only trials that cost anything.
CREATE INDEX IF NOT EXISTS trials_by_cost ON trials (campaign_id, cost_usd) WHERE cost_usd > 0;
CREATE TABLE IF NOT EXISTS gates (
    campaign_id TEXT, trial_id TEXT, gate TEXT, passed INTEGER, measured REAL, "limit" REAL, detail TEXT,
    PRIMARY KEY (campaign_id, trial_id, gate)
);
CREATE TABLE IF NOT EXISTS projection_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Lineage:
    """A lineage database (a file, or in memory for a process that keeps its own view).

    readonly opens an existing file without creating or changing anything (for `arx status --db`);
    durable=False skips fsyncs, for a file being rebuilt that its builder fsyncs once at the end.
    """

    def __init__(self, path: Path | str | None = None, *, readonly: bool = False, durable: bool = True):
        self.path = None if path is None else Path(path)
        if self.path is None:
            conn = sqlite3.connect(":memory:")
        elif readonly:
            conn = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro", uri=True)
        else:
            conn = sqlite3.connect(self.path)
            conn.execute(f"PRAGMA journal_mode = {'DELETE' if durable else 'MEMORY'}")
            if not durable:
                conn.execute("PRAGMA synchronous = OFF")
        self.db = sqlite_utils.Database(conn)
        if not readonly:
            conn.executescript(SCHEMA)
            columns = conn.execute("PRAGMA table_info(trials)").fetchall()
            self._defaults = {name: _literal(value) for _, name, _, _, value, _ in columns if name in UPDATED_COLUMNS}

    @property
    def checkpoint(self) -> int:
        return self.counter("seq")

    def counter(self, key: str) -> int:
        """A projection counter: 'seq' (last folded stream sequence) or 'skipped' (unusable events)."""
        row = self.db.execute("SELECT value FROM projection_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0

    def apply(self, batch: list[StoredMessage]) -> int:
        """Fold a batch in one transaction with its checkpoint; returns how many events applied.

        Messages at or below the checkpoint are ignored (a batch read again after a crash). A message
        that is not an event this version knows, or whose rows SQLite refuses, is skipped and counted.
        """
        try:
            return self._apply(batch, bulk=True)
        except OverflowError:
            # msgspec decodes integers up to 2**64, SQLite stores 63 bits: fold the batch again one
            # event at a time, leaving out the events SQLite refuses.
            return self._apply(batch, bulk=False)

    def _apply(self, batch: list[StoredMessage], *, bulk: bool) -> int:
        applied = 0
        with self._transaction():
            start = self.checkpoint
            fresh = [msg for msg in batch if msg.seq > start]
            if not fresh:
                return 0
            # A few hundred events at a time: their decoded text is still in the CPU's caches when
            # SQLite copies it (measured: a fifth less CPU time than a batch of 2000 at once).
            for i in range(0, len(fresh), FOLD_CHUNK):
                chunk = fresh[i : i + FOLD_CHUNK]
                folds = [(event, statements(event, msg.seq)) for msg in chunk if (event := _event(msg))]
                if bulk:
                    self._fold_in_bulk(folds)
                    applied += len(folds)
                else:
                    applied += sum(self._fold_one(stmts) for _, stmts in folds)
            self._set("seq", fresh[-1].seq)
            self._set("skipped", self.counter("skipped") + len(fresh) - applied)
        return applied

    def _fold_in_bulk(self, folds: list[Fold]) -> None:
        """The same rows as _fold_one for each, in far fewer statements (see bulk.py)."""
        inserts, rest = new_trials(folds, self._existing, self._defaults)
        for run in itertools.chain([inserts], bulk_runs(rest)):
            for sql, rows in run:
                self.db.conn.executemany(sql, rows)

    def _existing(self, keys: list[TrialKey]) -> set[TrialKey]:
        """Which of these trials have a row already."""
        found = set()
        for campaign in {c for c, _ in keys}:
            ids = [t for c, t in keys if c == campaign]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                rows = self.db.execute(
                    f"SELECT trial_id FROM trials WHERE campaign_id = ? AND trial_id IN ({','.join('?' * len(chunk))})",
                    (campaign, *chunk),
                )
                found.update((campaign, trial) for (trial,) in rows.fetchall())
        return found

    def _fold_one(self, stmts: list[Statement]) -> bool:
        """Run one event's statements, or none of them if SQLite refuses one."""
        self.db.conn.execute("SAVEPOINT event")
        try:
            for sql, params in stmts:
                self.db.conn.execute(sql, params)
        except OverflowError:
            self.db.conn.execute("ROLLBACK TO event")
            return False
        finally:
            self.db.conn.execute("RELEASE event")
        return True

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE: the checkpoint read and the writes that follow it are one writer's, atomically.
        self.db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.conn.rollback()
            raise
        self.db.conn.commit()

    def _set(self, key: str, value: int) -> None:
        self.db.execute(
            "INSERT INTO projection_state VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def query(self, sql: str, params: tuple = ()) -> list[dict]:
        cursor = self.db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def close(self) -> None:
        self.db.close()


def _literal(default: str | None):
    """A column's default as PRAGMA table_info gives it (SQL text), as a Python value."""
    return None if default is None or default.upper() == "NULL" else ast.literal_eval(default)


def _event(msg: StoredMessage) -> Event | None:
    """The message's event, or None for one this version cannot use (skipped and counted)."""
    try:
        return decode(msg.data)
    except (UnknownEvent, msgspec.DecodeError):
        return None


def loads(text: str | None):
    return json.loads(text) if text else None
