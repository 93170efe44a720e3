"""The lineage projection: fold events into SQLite, one transaction per batch.

A batch reads the rows its events name, folds the events into them in memory (fold.py), and writes
each row back once: one executemany per table, whatever the batch's size. The last applied stream
sequence is stored in the same transaction as the rows it produced, so a crash can make a batch be
read again but never applied twice, and every fold rule is idempotent besides. A rebuild from the
first event (Rebuild, for `arx replay`) folds the log into rows held in memory instead, up to a bound.

Files use SQLite's rollback journal, not WAL: `arx replay` swaps files under a running projector and
its readers (see lineage_file.py), and a rollback journal exists only while a batch is written,
where WAL's -wal/-shm files live on beside the file for as long as anyone has it open.
"""

from __future__ import annotations

import ast
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from urllib.parse import quote

import msgspec
import sqlite_utils

from bus.connection import StoredMessage
from bus import subjects
from bus.events import Event, Misfiled, NewerSchema, UnknownEvent, decode_stored
from projections.fold import Rows, TrialKey, fold, named_rows

# sqlite3 binds a None only after looking for an adapter for it, through two attribute lookups that
# fail with formatted error messages: a tenth of a bulk write's time. With one registered, that ends
# at a dict lookup. The adapter gives None back, which binds as NULL as before.
sqlite3.register_adapter(type(None), lambda none: none)

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id TEXT PRIMARY KEY, task TEXT, metric TEXT, direction TEXT, max_trials INTEGER,
    arm TEXT, noise REAL, started_at TEXT, started_seq INTEGER, bundle_sha256 TEXT, spec TEXT,
    stopped_at TEXT, stop_reason TEXT, stop_rules TEXT, budgets TEXT, prices TEXT,
    -- LLM calls that led to no proposal (LLMSpent); a trial's own are on its row
    unproposed_tokens INTEGER DEFAULT 0, unproposed_usd REAL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS specialists (
    campaign_id TEXT, specialist TEXT, surface TEXT, policy TEXT, joined_at TEXT,
    PRIMARY KEY (campaign_id, specialist)
);
CREATE TABLE IF NOT EXISTS trials (
    campaign_id TEXT, trial_id TEXT, proposed_seq INTEGER, specialist TEXT, surface TEXT, policy TEXT,
    parent_id TEXT, hypothesis TEXT, expected_delta REAL, diff TEXT, shown_ids TEXT, params TEXT,
    model TEXT, tokens_in INTEGER, tokens_out INTEGER, latency_s REAL, cost_usd REAL, proposed_at TEXT, slot INTEGER,
    started_at TEXT, executor TEXT, attempts INTEGER DEFAULT 0,
    finished_at TEXT, commit_sha TEXT, exit_code INTEGER, signal INTEGER, timed_out INTEGER,
    wall_s REAL, peak_rss_mb REAL, log_tail TEXT,
    outcome TEXT, label TEXT, score REAL, metrics TEXT, incumbent_id TEXT, incumbent_score REAL,
    delta REAL, noise REAL, outcome_seq INTEGER, outcome_at TEXT,
    evidence_stage TEXT, evidence_gate TEXT, evidence_measured REAL, evidence_limit REAL,
    evidence_frame TEXT, evidence_message TEXT,
    -- The ledger: device-seconds of every run of the trial (rivals and confirmation reruns included)
    -- and the evaluators' scoring time
    device_cpu_s REAL DEFAULT 0, device_cuda_s REAL DEFAULT 0, eval_s REAL DEFAULT 0,
    PRIMARY KEY (campaign_id, trial_id)
);
CREATE INDEX IF NOT EXISTS trials_by_outcome ON trials (campaign_id, outcome_seq);
CREATE INDEX IF NOT EXISTS trials_by_parent ON trials (campaign_id, parent_id, proposed_seq);
CREATE INDEX IF NOT EXISTS trials_by_specialist ON trials (campaign_id, specialist, outcome_seq);
-- The incumbent and the top kept trials (views.incumbent, the agents' lineage view).
CREATE INDEX IF NOT EXISTS trials_by_label ON trials (campaign_id, label, score);
-- What a campaign's LLM calls have cost so far (the cost cap): only trials that cost anything.
CREATE INDEX IF NOT EXISTS trials_by_cost ON trials (campaign_id, cost_usd) WHERE cost_usd > 0;
-- Trial slots the agents claimed (SlotClaimed): one claim per slot, the first one logged.
CREATE TABLE IF NOT EXISTS slot_claims (
    campaign_id TEXT, slot INTEGER, trial_id TEXT, claimed_at TEXT,
    PRIMARY KEY (campaign_id, slot)
);
CREATE TABLE IF NOT EXISTS gates (
    campaign_id TEXT, trial_id TEXT, gate TEXT, passed INTEGER, measured REAL, "limit" REAL, detail TEXT,
    PRIMARY KEY (campaign_id, trial_id, gate)
);
CREATE TABLE IF NOT EXISTS projection_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- Messages the fold would not use, and why: never folded, kept for the audit.
CREATE TABLE IF NOT EXISTS skipped_events (seq INTEGER PRIMARY KEY, subject TEXT, reason TEXT, detail TEXT);
"""


class OutdatedLineage(RuntimeError):
    """A lineage file made by an older arx, whose tables lack columns this one folds into."""


# Bytes of events a rebuild folds in memory before it writes them and goes on as the live fold does.
IN_MEMORY_BYTES = 256 << 20


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
        if self.path is not None and (missing := _missing_columns(conn)):
            conn.close()
            raise OutdatedLineage(f"{self.path} was made by an older arx (no {', '.join(missing)}):"
                                  f" `arx replay --db {self.path}` rebuilds it from the log")
        if not readonly:
            # Rows hold hypotheses, messages and log tails of a kilobyte or more: a page of 16 KiB (not
            # the default 4) holds several, and a rebuild writes its file in three quarters of the time.
            # A file made before keeps its pages: this sets only a new one's.
            conn.execute("PRAGMA page_size = 16384")
            conn.executescript(SCHEMA)
            self._new_campaign, self._new_trial = (_new_row(conn, table) for table in ("campaigns", "trials"))

    @property
    def checkpoint(self) -> int:
        return self.counter("seq")

    def counter(self, key: str) -> int:
        """A projection counter: 'seq', the last folded stream sequence."""
        row = self.db.execute("SELECT value FROM projection_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0

    def skipped(self, campaign_id: str | None = None) -> dict[str, int]:
        """How many messages the fold skipped, by reason (see `_event`): all, or those on one campaign's subjects."""
        prefix = subjects.of_campaign(campaign_id).removesuffix(">") if campaign_id else ""
        where, params = ("WHERE substr(subject, 1, ?) = ?", (len(prefix), prefix)) if prefix else ("", ())
        return dict(self.db.execute(
            f"SELECT reason, count(*) FROM skipped_events {where} GROUP BY reason ORDER BY reason", params
        ))

    def apply(self, batch: list[StoredMessage]) -> int:
        """Fold a batch in one transaction with its checkpoint; returns how many events applied.

        Messages at or below the checkpoint are ignored (a batch read again after a crash). A message
        the fold cannot trust or use is recorded in skipped_events with its reason, never folded.
        """
        with self._transaction():
            start = self.checkpoint
            fresh = [msg for msg in batch if msg.seq > start]
            if not fresh:
                return 0
            events, skipped = _sorted(fresh)
            rows = self._rows_named_by(events)
            for event, seq in events:
                fold(rows, event, seq)
            self._write(rows, skipped, fresh[-1].seq)
        return len(events)

    def _rows_named_by(self, events: list[tuple[Event, int]]) -> Rows:
        """The campaign and trial rows these events may change, as the file has them."""
        campaigns, trials = named_rows(event for event, _ in events)
        return self._rows(
            {row["campaign_id"]: row for row in self._select("campaigns", "campaign_id", {c: {c} for c in campaigns})},
            {(row["campaign_id"], row["trial_id"]): row for row in self._select("trials", "trial_id", trials)},
        )

    def _rows(self, campaigns: dict[str, dict], trials: dict[TrialKey, dict]) -> Rows:
        return Rows(campaigns, trials, new_campaign=self._new_campaign, new_trial=self._new_trial)

    def _select(self, table: str, key: str, wanted: dict[str, set[str]]) -> Iterator[dict]:
        """Rows of `table` of each campaign in `wanted` whose `key` is one of the campaign's values."""
        for campaign, values in wanted.items():
            values = sorted(values)
            for i in range(0, len(values), 500):
                chunk = values[i : i + 500]
                cursor = self.db.conn.execute(
                    f"SELECT * FROM {table} WHERE campaign_id = ? AND {key} IN ({','.join('?' * len(chunk))})",
                    (campaign, *chunk),
                )
                names = [d[0] for d in cursor.description]
                yield from (dict(zip(names, row)) for row in cursor)

    def _write(self, rows: Rows, skipped: list[tuple], seq: int, *, upsert: bool = True) -> None:
        """Write the folded rows and skipped messages, and `seq` as the checkpoint, in the caller's
        transaction. upsert=False: the file has none of the campaign and trial rows yet (a rebuild), so
        plain inserts do, without the conflict check an upsert makes (a fifth of a rebuild's write)."""
        conn = self.db.conn
        if rows.campaigns:
            conn.executemany(*_whole_rows("campaigns", ("campaign_id",), rows.campaigns, upsert))
        if rows.specialists:
            conn.executemany("INSERT INTO specialists VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING", rows.specialists)
        if rows.trials:
            conn.executemany(*_whole_rows("trials", ("campaign_id", "trial_id"), rows.trials, upsert))
        if rows.gates:
            conn.executemany("INSERT INTO gates VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING", rows.gates)
        if rows.claims:
            conn.executemany("INSERT INTO slot_claims VALUES (?,?,?,?) ON CONFLICT DO NOTHING", rows.claims)
        if skipped:
            conn.executemany("INSERT OR REPLACE INTO skipped_events VALUES (?, ?, ?, ?)", skipped)
        self._set("seq", seq)

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


class Rebuild:
    """A lineage folded from its first event into an empty file (`arx replay`): events are folded by
    Lineage.apply's rules into one set of rows held in memory, and each row is written once, one
    executemany per table, in one transaction with the checkpoint. Rows take two to three times the
    bytes of their events: past `in_memory` bytes of events, the rows are written and the rest of the
    log is folded as the live projector folds it, a batch at a time, so that memory stays bounded.
    The secondary indexes are made at the end, from every row at once."""

    def __init__(self, lineage: Lineage, in_memory: int = IN_MEMORY_BYTES):
        if lineage.checkpoint:
            raise ValueError(f"{lineage.path} holds a fold already: a rebuild starts from an empty lineage")
        self.lineage = lineage
        self.rows = lineage._rows({}, {})
        self.skipped: list[tuple] = []
        self.applied = 0
        self.last_seq = 0
        self.in_memory = in_memory  # bytes of events still to fold in memory
        self.written = False  # the rows folded in memory are in the file: fold as the live projector
        self._indexes = drop_indexes(lineage.db.conn)

    def add(self, batch: list[StoredMessage]) -> None:
        """Fold a batch (read in log order); messages at or below the last one added are ignored."""
        if self.written:
            self.applied += self.lineage.apply(batch)
            return
        fresh = [msg for msg in batch if msg.seq > self.last_seq]
        if not fresh:
            return
        events, skipped = _sorted(fresh)
        for event, seq in events:
            fold(self.rows, event, seq)
        self.skipped += skipped
        self.applied += len(events)
        self.last_seq = fresh[-1].seq
        self.in_memory -= sum(len(msg.data) for msg in fresh)
        if self.in_memory <= 0:
            with self.lineage._transaction():
                self._write()

    def finish(self) -> None:
        """Write the rows still in memory and make the indexes (a log with no message leaves the file
        as Lineage.apply leaves it)."""
        with self.lineage._transaction():
            self._write()
            for sql in self._indexes:
                self.lineage.db.conn.execute(sql)

    def _write(self) -> None:
        if self.last_seq and not self.written:
            self.lineage._write(self.rows, self.skipped, self.last_seq, upsert=False)
            self.rows, self.written = None, True


def drop_indexes(conn: sqlite3.Connection) -> list[str]:
    """Drop the secondary indexes before a bulk write; returns the statements that make them again after
    it. An index made from every row at once (one sort) costs less than one kept in order row by row;
    made again in this order, the indexes read the same in sqlite_master (and in a dump) as before."""
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in indexes]


@cache
def _schema_columns() -> dict[str, tuple[str, ...]]:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {table: tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})")) for table in tables}


def _missing_columns(conn: sqlite3.Connection) -> list[str]:
    """The schema's columns that a file's existing tables lack (a file without the tables lacks none:
    they are made; a file that is no database is left to fail where it is read)."""
    missing = []
    for table, columns in _schema_columns().items():
        try:
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        except sqlite3.DatabaseError:
            return []
        missing += [f"{table}.{column}" for column in columns if have and column not in have]
    return missing


def _new_row(conn: sqlite3.Connection, table: str) -> dict:
    """A row of `table` as INSERT would make it with no values given: every column, in schema order."""
    return {name: _literal(default) for _, name, _, _, default, _ in conn.execute(f"PRAGMA table_info({table})")}


@cache
def _rows_sql(table: str, key: tuple[str, ...], columns: tuple[str, ...], upsert: bool) -> str:
    insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({','.join('?' * len(columns))})"
    if not upsert:
        return insert
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return f"{insert} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"


def _whole_rows(table: str, key: tuple[str, ...], rows: dict, upsert: bool) -> tuple[str, Iterator[tuple]]:
    """Insert whole rows, which all name their columns in one (the schema's) order; with upsert, rewrite
    those the table has. An existing row keeps its rowid, so the table reads in the order its rows were
    first inserted. The values come as they are bound, not all copied first (a rebuild writes every row)."""
    columns = tuple(next(iter(rows.values())))
    return _rows_sql(table, key, columns, upsert), (tuple(row.values()) for row in rows.values())


def _literal(default: str | None):
    """A column's default as PRAGMA table_info gives it (SQL text), as a Python value."""
    return None if default is None or default.upper() == "NULL" else ast.literal_eval(default)


def _sorted(messages: list[StoredMessage]) -> tuple[list[tuple[Event, int]], list[tuple]]:
    """The messages' events with their sequences, and the skipped_events rows of those the fold will not use."""
    events, skipped = [], []
    for msg in messages:
        event = _event(msg)
        if isinstance(event, Event):
            events.append((event, msg.seq))
        else:
            skipped.append((msg.seq, msg.subject, *event))
    return events, skipped


def _event(msg: StoredMessage) -> Event | tuple[str, str]:
    """The message's event, or (reason, detail) for one the fold will not use: a newer type or schema,
    corrupt bytes, or an event that is not on its own subject (whose writer nats-server did not vouch for)."""
    try:
        return decode_stored(msg.subject, msg.data)
    except NewerSchema as exc:
        return "newer schema", str(exc)
    except UnknownEvent as exc:
        return "unknown type", str(exc)
    except Misfiled as exc:
        return "misfiled", str(exc)
    except (msgspec.DecodeError, ValueError) as exc:
        return "corrupt", str(exc)[:500]


# The outcomes a campaign's trial budget counts: scored or rejected, not abandoned by the harness.
BUDGETED = "outcome IN ('TrialScored', 'TrialRejected')"


def loads(text: str | None):
    return json.loads(text) if text else None
