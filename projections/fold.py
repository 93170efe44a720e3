"""The SQL that folds events into the lineage tables: statements(event, seq) is the whole fold of one
event (bulk.py runs a batch's statements together, to the same effect)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import msgspec

from bus.events import (
    CampaignStarted,
    CampaignStopped,
    Event,
    SpecialistJoined,
    TrialFinished,
    TrialProposed,
    TrialScored,
    TrialStarted,
    _TrialOutcome,
)

Statement = tuple[str, tuple]

_json = msgspec.json.encode


def _text(value) -> str:
    return _json(value).decode()


def _marks(count: int) -> str:
    return ",".join("?" * count)


CAMPAIGN_STARTED = (
    "INSERT INTO campaigns (campaign_id, task, metric, direction, max_trials, arm, noise,"
    " started_at, started_seq, bundle_sha256, spec) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (campaign_id) DO NOTHING"
)
CAMPAIGN_STOPPED = "UPDATE campaigns SET stopped_at = ?, stop_reason = ? WHERE campaign_id = ? AND stopped_at IS NULL"
SPECIALIST_JOINED = "INSERT INTO specialists VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING"
TRIAL_PROPOSED_COLUMNS = (
    "campaign_id", "trial_id", "proposed_seq", "specialist", "surface", "policy", "parent_id", "hypothesis",
    "expected_delta", "diff", "shown_ids", "params", "model", "tokens_in", "tokens_out", "latency_s", "cost_usd",
    "proposed_at",
)
TRIAL_PROPOSED = (
    f"INSERT INTO trials ({', '.join(TRIAL_PROPOSED_COLUMNS)}) VALUES ({_marks(len(TRIAL_PROPOSED_COLUMNS))})"
    " ON CONFLICT DO NOTHING"
)


class TrialUpdate(NamedTuple):
    """UPDATE trials SET <columns> WHERE campaign_id = ? AND trial_id = ? AND <guard>, with params: the
    columns' values, the trial's key, then the guard's value if it takes one. `holds` is the same
    guard on a row held in memory (bulk.py folds trials new to the database that way)."""

    columns: tuple[str, ...]
    guard: str
    holds: Callable[[dict, tuple], bool]

    def key(self, params: tuple) -> tuple[str, str]:
        """The trial's campaign_id and trial_id, which follow the columns' values."""
        return params[len(self.columns)], params[len(self.columns) + 1]

    @property
    def sql(self) -> str:
        assignments = ", ".join(f"{column} = ?" for column in self.columns)
        return f"UPDATE trials SET {assignments} WHERE campaign_id = ? AND trial_id = ? AND {self.guard}"


# The latest attempt wins, whatever order redeliveries are logged in.
STARTED = TrialUpdate(
    ("started_at", "executor", "attempts"), "attempts <= ?", lambda row, params: row["attempts"] <= params[-1]
)
FINISHED = TrialUpdate(
    ("finished_at", "commit_sha", "exit_code", "signal", "timed_out", "wall_s", "peak_rss_mb", "log_tail"),
    "outcome IS NULL",
    lambda row, params: row["outcome"] is None,
)
OUTCOME = TrialUpdate(
    ("outcome", "label", "score", "metrics", "incumbent_id", "incumbent_score", "delta", "noise", "outcome_seq",
     "outcome_at", "evidence_stage", "evidence_gate", "evidence_measured", "evidence_limit", "evidence_frame",
     "evidence_message"),
    "outcome IS NULL",
    lambda row, params: row["outcome"] is None,
)
TRIAL_UPDATES = (STARTED, FINISHED, OUTCOME)
UPDATED_COLUMNS = tuple(dict.fromkeys(column for update in TRIAL_UPDATES for column in update.columns))
TRIAL_STARTED, TRIAL_FINISHED, TRIAL_OUTCOME = (update.sql for update in TRIAL_UPDATES)
# Only the verdicts of the outcome that won: a later rival outcome adds no gates. Params: the gate's
# row (the gates table's columns in order), then the trial's key and the outcome's seq.
OUTCOME_GATE = (
    "INSERT INTO gates SELECT ?,?,?,?,?,?,? WHERE EXISTS (SELECT 1 FROM trials"
    " WHERE campaign_id = ? AND trial_id = ? AND outcome_seq = ?) ON CONFLICT DO NOTHING"
)


def statements(event: Event, seq: int) -> list[Statement]:
    """The SQL that folds one event into the lineage tables: a pure function of (event, seq).

    Booleans go in as ints, which SQLite stores them as anyway: sqlite3 first tries its adapter
    protocol on a bool (an int subclass), which costs more than binding the rest of the row."""
    c = event.campaign_id
    match event:
        case CampaignStarted():
            return [(CAMPAIGN_STARTED, (
                c, event.task, event.metric, event.direction, event.max_trials, event.arm, event.noise,
                event.occurred_at, seq, event.bundle.sha256, _text(event.spec),
            ))]
        case CampaignStopped():
            return [(CAMPAIGN_STOPPED, (event.occurred_at, event.reason, c))]
        case SpecialistJoined():
            return [(SPECIALIST_JOINED, (c, event.specialist, event.surface, event.policy, event.occurred_at))]
        case TrialProposed():
            return [(TRIAL_PROPOSED, (
                c, event.trial_id, seq, event.specialist, event.surface, event.policy, event.parent_id,
                event.hypothesis, event.expected_delta, event.diff, _text(event.shown_ids),
                _text(event.params), event.model, event.tokens_in, event.tokens_out, event.latency_s,
                event.cost_usd, event.occurred_at,
            ))]
        case TrialStarted():
            attempt = event.attempt
            return [(TRIAL_STARTED, (event.occurred_at, event.executor, attempt, c, event.trial_id, attempt))]
        case TrialFinished():
            return [(TRIAL_FINISHED, (
                event.occurred_at, event.commit, event.exit_code, event.signal, int(event.timed_out),
                event.wall_s, event.peak_rss_mb, event.log_tail, c, event.trial_id,
            ))]
        case _TrialOutcome():
            scored = isinstance(event, TrialScored)
            score = event.score if scored else None
            incumbent = event.incumbent_score if scored else None
            delta = score - incumbent if score is not None and incumbent is not None else None
            ev = event.evidence
            outcome = (TRIAL_OUTCOME, (
                type(event).__name__, event.label, score, _text(event.metrics) if scored else None,
                event.incumbent_id if scored else None, incumbent, delta,
                event.noise if scored else None, seq, event.occurred_at, ev.stage, ev.gate,
                ev.measured, ev.limit, ev.frame, ev.message, c, event.trial_id,
            ))
            gates = [
                (OUTCOME_GATE, (c, event.trial_id, gate.gate, int(gate.passed), gate.measured, gate.limit,
                                gate.detail, c, event.trial_id, seq))
                for gate in (event.gates if scored else ())
            ]
            return [outcome, *gates]
    return []
