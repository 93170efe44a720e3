"""The questions the agents and the evaluators ask of the lineage, one function each.

Every query is bounded (a LIMIT, or one row by key) and served by an index of lineage.SCHEMA; the
questions several roles share (the incumbent, the root, kept trials, ancestors) are in views.py.
"""

from __future__ import annotations

import msgspec

from projections.lineage import BUDGETED, Lineage


class Running(msgspec.Struct, frozen=True):
    campaign_id: str
    max_trials: int


class Labelled(msgspec.Struct, frozen=True):
    trial_id: str
    hypothesis: str | None
    label: str | None


class Failure(msgspec.Struct, frozen=True):
    """A failed trial with the measurement its outcome gave, as the repair specialist reads it."""

    trial_id: str
    parent_id: str | None
    label: str
    policy: str | None
    shown_ids: str | None  # JSON text, as stored
    evidence_gate: str | None
    evidence_measured: float | None
    evidence_limit: float | None


class Origin(msgspec.Struct, frozen=True):
    policy: str | None
    shown_ids: str | None  # JSON text, as stored


class KnobTrial(msgspec.Struct, frozen=True):
    trial_id: str
    parent_id: str | None
    params: str | None  # JSON text, as stored
    label: str | None
    score: float | None


class Step(msgspec.Struct, frozen=True):
    parent_id: str | None
    diff: str | None


def _one(lineage: Lineage, sql: str, params: tuple) -> tuple | None:
    return lineage.db.execute(sql, params).fetchone()


def running_campaigns(lineage: Lineage) -> list[Running]:
    """Every campaign that has not stopped, with what its budget check needs."""
    return [
        Running(*row) for row in lineage.db.execute(
            "SELECT campaign_id, max_trials FROM campaigns WHERE stopped_at IS NULL"
        )
    ]


def latest_labels(lineage: Lineage, campaign_id: str, limit: int, *, counted: bool = False) -> list[str]:
    """The labels of the campaign's last `limit` outcomes (only those the budget counts: scored or
    rejected), newest first, its root trial (the baseline) aside."""
    kinds = BUDGETED if counted else "outcome_seq IS NOT NULL"
    return [label for (label,) in lineage.db.execute(
        f"SELECT label FROM trials WHERE campaign_id = ? AND {kinds} AND parent_id IS NOT NULL"
        " ORDER BY outcome_seq DESC LIMIT ?", (campaign_id, limit),
    )]


def has_joined(lineage: Lineage, campaign_id: str, specialist: str) -> bool:
    """Has the specialist joined the campaign?"""
    sql = "SELECT 1 FROM specialists WHERE campaign_id = ? AND specialist = ?"
    return _one(lineage, sql, (campaign_id, specialist)) is not None


def has_trial(lineage: Lineage, campaign_id: str, trial_id: str) -> bool:
    """Is the trial in the lineage (proposed, whatever became of it)?"""
    sql = "SELECT 1 FROM trials WHERE campaign_id = ? AND trial_id = ?"
    return _one(lineage, sql, (campaign_id, trial_id)) is not None


def has_outcome(lineage: Lineage, campaign_id: str, trial_id: str) -> bool:
    """Does the trial have its outcome (scored, rejected or abandoned) already?"""
    row = _one(lineage, "SELECT outcome FROM trials WHERE campaign_id = ? AND trial_id = ?", (campaign_id, trial_id))
    return row is not None and row[0] is not None


def campaign_cost(lineage: Lineage, campaign_id: str) -> float:
    """LLM dollars the campaign has spent so far: its trials' (served by the partial index trials_by_cost)
    and its calls' that led to no proposal."""
    (spent,) = _one(
        lineage,
        "SELECT coalesce(sum(cost_usd), 0) + coalesce((SELECT unproposed_usd FROM campaigns WHERE campaign_id = ?1), 0)"
        " FROM trials WHERE campaign_id = ?1 AND cost_usd > 0",
        (campaign_id,),
    )
    return spent


def step(lineage: Lineage, campaign_id: str, trial_id: str) -> Step | None:
    """The trial's parent and the diff that made it from the parent's tree; None for an unknown trial."""
    row = _one(lineage, "SELECT parent_id, diff FROM trials WHERE campaign_id = ? AND trial_id = ?",
               (campaign_id, trial_id))
    return Step(*row) if row else None


def tried_diffs(lineage: Lineage, campaign_id: str, parent_id: str, limit: int) -> set[str | None]:
    """The diffs already tried on a parent, but for trials lost to the harness (harness_abort)."""
    return {
        diff
        for (diff,) in lineage.db.execute(
            "SELECT diff FROM trials WHERE campaign_id = ? AND parent_id = ?"
            " AND coalesce(label, '') != 'harness_abort' LIMIT ?",
            (campaign_id, parent_id, limit),
        )
    }


def policy_trials(lineage: Lineage, campaign_id: str, policy: str, limit: int) -> list[Labelled]:
    """A policy's last `limit` trials, newest proposed first, but for those lost to the harness."""
    return [
        Labelled(*row)
        for row in lineage.db.execute(
            "SELECT trial_id, hypothesis, label FROM trials WHERE campaign_id = ? AND policy = ?"
            " AND coalesce(label, '') != 'harness_abort' ORDER BY proposed_seq DESC LIMIT ?",
            (campaign_id, policy, limit),
        )
    ]


def first_shown(lineage: Lineage, campaign_id: str, policy: str) -> list[tuple[str | None, str | None]]:
    """The first two shown ids of each of a policy's trials: what it merged, or the failure it repaired."""
    return lineage.db.execute(
        "SELECT json_extract(shown_ids, '$[0]'), json_extract(shown_ids, '$[1]')"
        " FROM trials WHERE campaign_id = ? AND policy = ?",
        (campaign_id, policy),
    ).fetchall()


def failures_on(
    lineage: Lineage, campaign_id: str, parent_id: str, labels: tuple[str, ...], limit: int
) -> list[Failure]:
    """The last `limit` trials on a parent whose outcome has one of these labels, newest outcome first."""
    marks = ", ".join("?" * len(labels))
    return [
        Failure(*row)
        for row in lineage.db.execute(
            "SELECT trial_id, parent_id, label, policy, shown_ids, evidence_gate, evidence_measured, evidence_limit"
            f" FROM trials WHERE campaign_id = ? AND parent_id = ? AND label IN ({marks})"
            " ORDER BY outcome_seq DESC LIMIT ?",
            (campaign_id, parent_id, *labels, limit),
        )
    ]


def origin(lineage: Lineage, campaign_id: str, shown_ids: str | None) -> Origin | None:
    """The policy and shown ids of the trial a trial showed first (a repair's failed trial)."""
    row = _one(
        lineage,
        "SELECT policy, shown_ids FROM trials WHERE campaign_id = ? AND trial_id = json_extract(?, '$[0]')",
        (campaign_id, shown_ids),
    )
    return Origin(*row) if row else None


def knob_history(lineage: Lineage, campaign_id: str, limit: int) -> list[KnobTrial]:
    """Trials with knob values (or the root, whose values come from the bundle): `limit` of them, those in
    flight first, then the most recent outcomes, returned in proposal order. Trials lost to the harness
    (harness_abort) are left out: they say nothing about the knob values."""
    return [
        KnobTrial(*row)
        for row in lineage.db.execute(
            """SELECT trial_id, parent_id, params, label, score FROM trials WHERE campaign_id = ? AND trial_id IN (
                SELECT trial_id FROM trials
                WHERE campaign_id = ? AND (params != '{}' OR parent_id IS NULL)
                    AND coalesce(label, '') != 'harness_abort'
                ORDER BY outcome_seq IS NOT NULL, outcome_seq DESC LIMIT ?
            ) ORDER BY proposed_seq""",
            (campaign_id, campaign_id, limit),
        )
    ]
