"""The lineage projection: fold events into SQLite, one transaction per batch.

The last applied stream sequence is stored in the same transaction as the rows it produced, so a
crash can make a batch be read again but never applied twice; every statement is also idempotent on
its own (INSERT ... ON CONFLICT, outcome written only while a trial has none).

Files use SQLite's rollback journal, not WAL: `arx replay` swaps files under a running projector and
its readers (see lineage_file.py), and a rollback journal exists only while a batch is written,
where WAL's -wal/-shm files live on beside the file for as long as anyone has it open.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import msgspec
import sqlite_utils

from bus.connection import StoredMessage
from bus.events import (
    CampaignStarted,
    CampaignStopped,
    Event,
    SpecialistJoined,
    TrialFinished,
    TrialProposed,
    TrialScored,
    TrialStarted,
    UnknownEvent,
    _TrialOutcome,
    decode,
)

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
CREATE INDEX IF NOT EXISTS trials_by_parent ON trials (campaign_id, parent_id);
CREATE INDEX IF NOT EXISTS trials_by_specialist ON trials (campaign_id, specialist, outcome_seq);
CREATE TABLE IF NOT EXISTS gates (
    campaign_id TEXT, trial_id TEXT, gate TEXT, passed INTEGER, measured REAL, "limit" REAL, detail TEXT,
    PRIMARY KEY (campaign_id, trial_id, gate)
);
CREATE TABLE IF NOT EXISTS projection_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_json = msgspec.json.encode


def _text(value) -> str:
    return _json(value).decode()


def statements(event: Event, seq: int) -> Iterable[tuple[str, tuple]]:
    """The SQL that folds one event into the lineage tables: a pure function of (event, seq)."""
    c = event.campaign_id
    match event:
        case CampaignStarted():
            yield (
                "INSERT INTO campaigns (campaign_id, task, metric, direction, max_trials, arm, noise,"
                " started_at, started_seq, bundle_sha256, spec) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (campaign_id) DO NOTHING",
                (c, event.task, event.metric, event.direction, event.max_trials, event.arm, event.noise,
                 event.occurred_at, seq, event.bundle.sha256, _text(event.spec)),
            )
        case CampaignStopped():
            yield (
                "UPDATE campaigns SET stopped_at = ?, stop_reason = ? WHERE campaign_id = ? AND stopped_at IS NULL",
                (event.occurred_at, event.reason, c),
            )
        case SpecialistJoined():
            yield (
                "INSERT INTO specialists VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                (c, event.specialist, event.surface, event.policy, event.occurred_at),
            )
        case TrialProposed():
            yield (
                "INSERT INTO trials (campaign_id, trial_id, proposed_seq, specialist, surface, policy,"
                " parent_id, hypothesis, expected_delta, diff, shown_ids, params, model, tokens_in,"
                " tokens_out, latency_s, cost_usd, proposed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT DO NOTHING",
                (c, event.trial_id, seq, event.specialist, event.surface, event.policy, event.parent_id,
                 event.hypothesis, event.expected_delta, event.diff, _text(event.shown_ids),
                 _text(event.params), event.model, event.tokens_in, event.tokens_out, event.latency_s,
                 event.cost_usd, event.occurred_at),
            )
        case TrialStarted():
            yield (
                # The latest attempt wins, whatever order redeliveries are logged in.
                "UPDATE trials SET started_at = ?, executor = ?, attempts = ?"
                " WHERE campaign_id = ? AND trial_id = ? AND attempts <= ?",
                (event.occurred_at, event.executor, event.attempt, c, event.trial_id, event.attempt),
            )
        case TrialFinished():
            yield (
                "UPDATE trials SET finished_at = ?, commit_sha = ?, exit_code = ?, signal = ?,"
                " timed_out = ?, wall_s = ?, peak_rss_mb = ?, log_tail = ?"
                " WHERE campaign_id = ? AND trial_id = ? AND outcome IS NULL",
                (event.occurred_at, event.commit, event.exit_code, event.signal, event.timed_out,
                 event.wall_s, event.peak_rss_mb, event.log_tail, c, event.trial_id),
            )
        case _TrialOutcome():
            scored = isinstance(event, TrialScored)
            score = event.score if scored else None
            incumbent = event.incumbent_score if scored else None
            delta = score - incumbent if score is not None and incumbent is not None else None
            ev = event.evidence
            yield (
                "UPDATE trials SET outcome = ?, label = ?, score = ?, metrics = ?, incumbent_id = ?,"
                " incumbent_score = ?, delta = ?, noise = ?, outcome_seq = ?, outcome_at = ?,"
                " evidence_stage = ?, evidence_gate = ?, evidence_measured = ?, evidence_limit = ?,"
                " evidence_frame = ?, evidence_message = ?"
                " WHERE campaign_id = ? AND trial_id = ? AND outcome IS NULL",
                (type(event).__name__, event.label, score, _text(event.metrics) if scored else None,
                 event.incumbent_id if scored else None, incumbent, delta,
                 event.noise if scored else None, seq, event.occurred_at, ev.stage, ev.gate,
                 ev.measured, ev.limit, ev.frame, ev.message, c, event.trial_id),
            )
            for gate in event.gates if scored else ():
                # Only the verdicts of the outcome that won: a later rival outcome adds no gates.
                yield (
                    "INSERT INTO gates SELECT ?,?,?,?,?,?,? WHERE EXISTS (SELECT 1 FROM trials"
                    " WHERE campaign_id = ? AND trial_id = ? AND outcome_seq = ?) ON CONFLICT DO NOTHING",
                    (c, event.trial_id, gate.gate, gate.passed, gate.measured, gate.limit, gate.detail,
                     c, event.trial_id, seq),
                )


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
        applied = skipped = 0
        with self._transaction():
            start = self.checkpoint
            for msg in batch:
                if msg.seq <= start:
                    continue
                if self._fold(msg):
                    applied += 1
                else:
                    skipped += 1
            if batch and batch[-1].seq > start:
                self._set("seq", batch[-1].seq)
                self._set("skipped", self.counter("skipped") + skipped)
        return applied

    def _fold(self, msg: StoredMessage) -> bool:
        try:
            event = decode(msg.data)
        except (UnknownEvent, msgspec.DecodeError):
            return False
        # A savepoint per event: an event SQLite refuses (msgspec decodes integers up to 2**64, SQLite
        # stores 63 bits) must leave none of its statements behind.
        self.db.conn.execute("SAVEPOINT event")
        try:
            for sql, params in statements(event, msg.seq):
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


def loads(text: str | None):
    return json.loads(text) if text else None
