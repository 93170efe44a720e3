"""Bounded read-only queries on the lineage: the same cost at 10 trials and at 100,000."""

from __future__ import annotations

import datetime as dt
import time

import msgspec

from bus.events import Budgets, Prices, StopRules, stamp
from projections.lineage import BUDGETED, Lineage, loads


# How long a claimed slot may wait for its proposal before it counts as lost (views.slots).
CLAIM_GRACE_S = 120.0


class Incumbent(msgspec.Struct, frozen=True):
    trial_id: str
    score: float


class Trial(msgspec.Struct, frozen=True):
    """A trial as the agents see it in a list: who proposed what, and how it ended."""

    trial_id: str
    parent_id: str | None
    specialist: str | None
    label: str | None
    score: float | None
    delta: float | None
    hypothesis: str | None


TRIAL_COLUMNS = ", ".join(Trial.__struct_fields__)


def trials(lineage: Lineage, sql: str, params: tuple = ()) -> list[Trial]:
    """The rows of a query that selects TRIAL_COLUMNS, as Trials."""
    return [Trial(*row) for row in lineage.db.execute(sql, params)]


class Campaign(msgspec.Struct, frozen=True):
    """A campaign as its CampaignStarted (and CampaignStopped) recorded it."""

    campaign_id: str
    task: str
    metric: str
    direction: str
    max_trials: int
    arm: str | None
    noise: float | None
    started_at: str
    started_seq: int
    spec: dict
    stopped_at: str | None
    stop_reason: str | None
    stop_rules: StopRules
    budgets: Budgets
    prices: Prices


_CAMPAIGN_COLUMNS = ", ".join(Campaign.__struct_fields__)


def campaign(lineage: Lineage, campaign_id: str | None = None) -> Campaign | None:
    """The named campaign, or the most recently started one."""
    select = f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns"
    if campaign_id is None:
        row = lineage.db.execute(f"{select} ORDER BY started_seq DESC LIMIT 1").fetchone()
    else:
        row = lineage.db.execute(f"{select} WHERE campaign_id = ?", (campaign_id,)).fetchone()
    if row is None:
        return None
    fields = dict(zip(Campaign.__struct_fields__, row))
    # JSON columns: a NULL is a campaign from before the column, which declared none.
    for name, kind in (("spec", dict), ("stop_rules", StopRules), ("budgets", Budgets), ("prices", Prices)):
        fields[name] = msgspec.json.decode(fields[name], type=kind) if fields[name] else kind()
    return Campaign(**fields)


def running_campaign(lineage: Lineage, task: str | None = None) -> str | None:
    """The most recently started campaign that has not stopped (optionally only of one task)."""
    rows = lineage.db.execute(
        "SELECT campaign_id FROM campaigns WHERE stopped_at IS NULL AND (? IS NULL OR task = ?)"
        " ORDER BY started_seq DESC LIMIT 1",
        (task, task),
    ).fetchall()
    return rows[0][0] if rows else None


def _order(direction: str) -> str:
    return "ASC" if direction == "min" else "DESC"


def kept(lineage: Lineage, campaign_id: str, direction: str, limit: int) -> list[Trial]:
    """The best `limit` kept trials, best first; ties go to the earlier outcome. The first is the incumbent."""
    return trials(
        lineage,
        f"SELECT {TRIAL_COLUMNS} FROM trials WHERE campaign_id = ? AND label = 'keep' AND score IS NOT NULL"
        f" ORDER BY score {_order(direction)}, outcome_seq LIMIT ?",
        (campaign_id, limit),
    )


def incumbent(lineage: Lineage, campaign_id: str, direction: str) -> Incumbent | None:
    """The best kept trial: the one every new trial must beat by more than the noise."""
    best = kept(lineage, campaign_id, direction, 1)
    return Incumbent(best[0].trial_id, best[0].score) if best else None


def root_trial(lineage: Lineage, campaign_id: str) -> Trial | None:
    """The campaign's root: its first trial proposed without a parent (the baseline)."""
    found = trials(
        lineage,
        f"SELECT {TRIAL_COLUMNS} FROM trials WHERE campaign_id = ? AND parent_id IS NULL ORDER BY proposed_seq LIMIT 1",
        (campaign_id,),
    )
    return found[0] if found else None


def ancestors(lineage: Lineage, campaign_id: str, trial_id: str, steps: int) -> list[Trial]:
    """The trial and up to `steps` of its ancestors, nearest first (empty when the trial is unknown)."""
    return trials(
        lineage,
        f"""WITH RECURSIVE chain(trial_id, parent_id, depth) AS (
            SELECT trial_id, parent_id, 0 FROM trials WHERE campaign_id = ? AND trial_id = ?
            UNION ALL
            SELECT t.trial_id, t.parent_id, chain.depth + 1 FROM trials t JOIN chain
                ON t.campaign_id = ? AND t.trial_id = chain.parent_id WHERE chain.depth < ?
        )
        SELECT {", ".join(f"t.{name}" for name in Trial.__struct_fields__)} FROM chain
            JOIN trials t ON t.campaign_id = ? AND t.trial_id = chain.trial_id
        ORDER BY chain.depth""",
        (campaign_id, trial_id, campaign_id, steps, campaign_id),
    )


def trial_count(lineage: Lineage, campaign_id: str, specialist: str) -> int:
    """How many trials the specialist has proposed in the campaign (its trial numbering)."""
    (n,) = lineage.db.execute(
        "SELECT count(*) FROM trials WHERE campaign_id = ? AND specialist = ?", (campaign_id, specialist)
    ).fetchone()
    return n


def counted_outcomes(lineage: Lineage, campaign_id: str) -> int:
    """Trials that count against the campaign's budget: scored or rejected, not abandoned."""
    (n,) = lineage.db.execute(
        f"SELECT count(*) FROM trials WHERE campaign_id = ? AND {BUDGETED}",
        (campaign_id,),
    ).fetchone()
    return n


def slots(lineage: Lineage, camp: Campaign, *, now: float | None = None) -> list[int]:
    """The trial slots an agent may still claim (SlotClaimed), lowest first: up to max_trials in all,
    less the budget that trials without a slot take (the baseline), plus one for each slotted trial the
    harness abandoned and for each claim that no proposal followed within CLAIM_GRACE_S (its agent died
    between the two): both are replaced, as neither counts. A claim outside the slots (a client's
    slot 10**12) takes nothing."""
    c = camp.campaign_id
    abandoned, unslotted = lineage.db.execute(
        "SELECT count(*) FILTER (WHERE slot IS NOT NULL AND outcome = 'TrialAbandoned'),"
        f" count(*) FILTER (WHERE slot IS NULL AND (outcome IS NULL OR {BUDGETED}))"
        " FROM trials WHERE campaign_id = ?",
        (c,),
    ).fetchone()
    limit = camp.max_trials - unslotted + abandoned
    claimed, last = _claims(lineage, c, limit)
    if claimed >= limit:  # the budget looks spent: are some of its slots held by claims never proposed?
        limit += _orphaned_claims(lineage, c, limit, time.time() if now is None else now)
        claimed, last = _claims(lineage, c, limit)
    free = list(range(last + 1, limit + 1))
    if claimed < last:  # a slot below the highest claimed one is free (claims are not always in order)
        taken = {slot for (slot,) in lineage.db.execute(
            "SELECT slot FROM slot_claims WHERE campaign_id = ? AND slot BETWEEN 1 AND ?", (c, last))}
        free = [slot for slot in range(1, last + 1) if slot not in taken] + free
    return free


def _claims(lineage: Lineage, campaign_id: str, limit: int) -> tuple[int, int]:
    """How many of the slots 1..limit are claimed, and the highest claimed."""
    return lineage.db.execute(
        "SELECT count(*), coalesce(max(slot), 0) FROM slot_claims WHERE campaign_id = ? AND slot BETWEEN 1 AND ?",
        (campaign_id, limit),
    ).fetchone()


def _orphaned_claims(lineage: Lineage, campaign_id: str, limit: int, now: float) -> int:
    cutoff = dt.datetime.fromtimestamp(now - CLAIM_GRACE_S, dt.timezone.utc)
    (orphaned,) = lineage.db.execute(
        "SELECT count(*) FROM slot_claims AS s WHERE s.campaign_id = ? AND s.slot BETWEEN 1 AND ?"
        " AND s.claimed_at < ?"
        " AND NOT EXISTS (SELECT 1 FROM trials AS t WHERE t.campaign_id = s.campaign_id AND t.trial_id = s.trial_id)",
        (campaign_id, limit, stamp(cutoff)),
    ).fetchone()
    return orphaned


def in_flight(lineage: Lineage, campaign_id: str, specialist: str | None = None) -> int:
    """Proposed trials without an outcome yet (optionally only one specialist's)."""
    sql = "SELECT count(*) FROM trials WHERE campaign_id = ? AND outcome IS NULL"
    params: tuple = (campaign_id,)
    if specialist is not None:
        sql += " AND specialist = ?"
        params += (specialist,)
    return lineage.db.execute(sql, params).fetchone()[0]


def recent_labels(lineage: Lineage, campaign_id: str, specialist: str, count: int) -> list[str]:
    """The labels of one specialist's last `count` outcomes, newest first."""
    rows = lineage.query(
        "SELECT label FROM trials WHERE campaign_id = ? AND specialist = ? AND outcome_seq IS NOT NULL"
        " ORDER BY outcome_seq DESC LIMIT ?",
        (campaign_id, specialist, count),
    )
    return [row["label"] for row in rows]


def confirmed(lineage: Lineage, campaign_id: str) -> int:
    """Outcomes decided by rerunning the candidate beside the incumbent (a win within a few noise widths)."""
    (n,) = lineage.db.execute(
        "SELECT count(*) FROM trials WHERE campaign_id = ? AND evidence_stage = 'confirm'", (campaign_id,)
    ).fetchone()
    return n


def delta(score: float | None, before: float | None) -> float | None:
    """score - before, None when either is; rounded so that 1.080423 - 1.081 prints as -0.000577, not as its
    binary neighbour."""
    return None if score is None or before is None else round(score - before, 9)


def improvement_pct(baseline: float | None, best: float | None) -> float | None:
    """Signed change of the best over the baseline: negative when the score went down."""
    if baseline is None or best is None or baseline == 0:
        return None
    return round((best - baseline) / abs(baseline) * 100.0, 3)


def change_text(pct: float | None, direction: str) -> str:
    """improvement_pct as status, audit and the HTML report all print it: signed, with which way is better."""
    if pct is None:
        return "-"
    return f"{pct:+.3f}% ({'lower' if direction == 'min' else 'higher'} is better)"


# Every trial count that status, audit and the report print includes the baseline (the campaign's root
# trial), as the campaign's budget (`--trials N`) counts it; the output says so with these words.
COUNTED = "baseline included"


def gates(lineage: Lineage, campaign_id: str, trial_id: str) -> list[dict]:
    """The evaluator's gate verdicts on a trial, in the order it checked them."""
    return [
        {"metric": gate, "measured": measured, "limit": limit, "passed": bool(passed)}
        for gate, measured, limit, passed in lineage.db.execute(
            'SELECT gate, measured, "limit", passed FROM gates WHERE campaign_id = ? AND trial_id = ? ORDER BY rowid',
            (campaign_id, trial_id),
        )
    ]


def gates_text(verdicts: list[dict]) -> str:
    """Gate verdicts on one line: `accuracy 0.9712 (limit 0.96) passed, ...`."""
    return ", ".join(
        f"{g['metric']} {_g(g['measured'])} (limit {_g(g['limit'])}) {'passed' if g['passed'] else 'FAILED'}"
        for g in verdicts
    ) or "none recorded"


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def trial_detail(lineage: Lineage, campaign_id: str, trial_id: str) -> dict | None:
    """One trial as `arx show` prints it: what was proposed, how it ran and how it was scored."""
    rows = lineage.query(
        "SELECT trial_id, specialist, surface, parent_id, hypothesis, diff, label, score, metrics, incumbent_id,"
        " incumbent_score, delta, log_tail, evidence_stage, evidence_message FROM trials"
        " WHERE campaign_id = ? AND trial_id = ?",
        (campaign_id, trial_id),
    )
    if not rows:
        return None
    row = rows[0]
    row["metrics"] = loads(row["metrics"]) or {}
    return row


def summary(lineage: Lineage, campaign_id: str | None = None, *, recent: int = 10) -> dict | None:
    """What `arx status` shows: labels, baseline, incumbent and its gates, improvement and the last trials.
    Counts and labels include the baseline (COUNTED); a recent trial's delta is against the incumbent it
    was scored against."""
    camp = campaign(lineage, campaign_id)
    if camp is None:
        return None
    c = camp.campaign_id
    labels = {
        row["label"]: row["n"]
        for row in lineage.query(
            "SELECT label, count(*) AS n FROM trials WHERE campaign_id = ? AND label IS NOT NULL"
            " GROUP BY label ORDER BY label",
            (c,),
        )
    }
    (scored,) = lineage.db.execute(
        "SELECT count(*) FROM trials WHERE campaign_id = ? AND outcome = 'TrialScored'", (c,)
    ).fetchone()
    baseline = root_trial(lineage, c)
    baseline_score = baseline.score if baseline else None
    best = incumbent(lineage, c, camp.direction)
    last = lineage.query(
        "SELECT trial_id, specialist, label, score, delta, hypothesis FROM trials"
        " WHERE campaign_id = ? AND outcome_seq IS NOT NULL ORDER BY outcome_seq DESC LIMIT ?",
        (c, recent),
    )
    return {
        "campaign": c,
        "task": camp.task,
        "metric": camp.metric,
        "direction": camp.direction,
        "arm": camp.arm,
        "max_trials": camp.max_trials,
        "stopped": camp.stopped_at is not None,
        "stop_reason": camp.stop_reason,
        "trials_proposed": lineage.db.execute(
            "SELECT count(*) FROM trials WHERE campaign_id = ?", (c,)
        ).fetchone()[0],
        "trials_scored": scored,
        "in_flight": in_flight(lineage, c),
        "labels": labels,
        "noise": camp.noise,
        "noise_prior": camp.spec.get("noise"),
        "confirmed": confirmed(lineage, c),
        "baseline_trial": baseline.trial_id if baseline else None,
        "baseline_score": baseline_score,
        "best_score": best.score if best else None,
        "best_trial": best.trial_id if best else None,
        "best_gates": gates(lineage, c, best.trial_id) if best else [],
        "improvement_pct": improvement_pct(baseline_score, best.score if best else None),
        "recent": last,
        # Messages on this campaign's subjects that the fold would not trust or use, by reason.
        "skipped_events": lineage.skipped(c),
    }
