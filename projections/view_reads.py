"""The queries behind the lineage view in the agents' prompts (agents/lineage_view.py builds it).

Each is bounded by a LIMIT and served by an index of lineage.SCHEMA, so the view costs the same at 10
trials and at 100,000.
"""

from __future__ import annotations

import msgspec

from bus.events import FAILURE_LABELS
from projections.lineage import Lineage
from projections.views import TRIAL_COLUMNS, Trial, trials

_FAILURES = tuple(sorted(FAILURE_LABELS))
# FailedTrial's fields after the trial, in order.
_EVIDENCE = (
    "evidence_stage, evidence_gate, evidence_measured, evidence_limit, evidence_frame, evidence_message, log_tail"
)
# A specialist's most recent outcomes, newest first: the window its failures and saturation look at.
_OWN_RECENT = (
    f"SELECT {TRIAL_COLUMNS}, outcome, outcome_seq, log_tail, evidence_stage, evidence_gate, evidence_measured,"
    " evidence_limit, evidence_frame, evidence_message FROM trials"
    " WHERE campaign_id = ? AND specialist = ? AND outcome_seq IS NOT NULL ORDER BY outcome_seq DESC LIMIT ?"
)


class FailedTrial(msgspec.Struct, frozen=True):
    """A failed trial with the evidence of its outcome."""

    trial: Trial
    stage: str | None
    gate: str | None
    measured: float | None
    limit: float | None
    frame: str | None
    message: str | None
    log_tail: str | None


def children(lineage: Lineage, campaign_id: str, parent_id: str, limit: int) -> list[Trial]:
    """The parent's `limit` newest children."""
    return trials(
        lineage,
        f"SELECT {TRIAL_COLUMNS} FROM trials WHERE campaign_id = ? AND parent_id = ?"
        " ORDER BY proposed_seq DESC LIMIT ?",
        (campaign_id, parent_id, limit),
    )


def children_count(lineage: Lineage, campaign_id: str, parent_id: str) -> int:
    """How many children the parent has."""
    (n,) = lineage.db.execute(
        "SELECT count(*) FROM trials WHERE campaign_id = ? AND parent_id = ?", (campaign_id, parent_id)
    ).fetchone()
    return n


def recent_outcomes(lineage: Lineage, campaign_id: str, limit: int) -> list[Trial]:
    """The `limit` most recent outcomes of all specialists, newest first."""
    return trials(
        lineage,
        f"SELECT {TRIAL_COLUMNS} FROM trials WHERE campaign_id = ? AND outcome_seq IS NOT NULL"
        " ORDER BY outcome_seq DESC LIMIT ?",
        (campaign_id, limit),
    )


def pending(lineage: Lineage, campaign_id: str, limit: int) -> list[Trial]:
    """The `limit` newest trials without an outcome yet."""
    return trials(
        lineage,
        f"SELECT {TRIAL_COLUMNS} FROM trials WHERE campaign_id = ? AND outcome_seq IS NULL"
        " ORDER BY proposed_seq DESC LIMIT ?",
        (campaign_id, limit),
    )


def own_failures(lineage: Lineage, campaign_id: str, specialist: str, window: int, limit: int) -> list[FailedTrial]:
    """The specialist's `limit` newest failures among its `window` most recent outcomes, with their evidence."""
    marks = ",".join("?" * len(_FAILURES))
    rows = lineage.db.execute(
        f"SELECT {TRIAL_COLUMNS}, {_EVIDENCE} FROM ({_OWN_RECENT}) WHERE label IN ({marks})"
        " ORDER BY outcome_seq DESC LIMIT ?",
        (campaign_id, specialist, window, *_FAILURES, limit),
    )
    width = len(Trial.__struct_fields__)
    return [FailedTrial(Trial(*row[:width]), *row[width:]) for row in rows]


def own_scored_deltas(lineage: Lineage, campaign_id: str, specialist: str, window: int, limit: int) -> list[float]:
    """The score changes of the specialist's `limit` newest scored trials among its `window` most recent outcomes."""
    return [
        delta
        for (delta,) in lineage.db.execute(
            f"SELECT delta FROM ({_OWN_RECENT})"
            " WHERE outcome = 'TrialScored' AND delta IS NOT NULL ORDER BY outcome_seq DESC LIMIT ?",
            (campaign_id, specialist, window, limit),
        )
    ]
