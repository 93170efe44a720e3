"""How each event changes the lineage rows: fold(rows, event, seq), in log order, on rows held in memory.

Lineage.apply reads the rows a batch's events name from the file, folds the batch into them here and
writes each row back once. Every rule is idempotent, so a batch read again after a crash, a
redelivered event or a rival outcome changes nothing it should not:
- a campaign, a specialist or a trial is created by its first event of that kind (later ones are no-ops);
- an event about a trial that has no row yet (logged before its proposal) does nothing;
- the latest attempt's start wins, whatever order redeliveries are logged in;
- the first outcome wins; a finish logged after it changes nothing, and only its gates are kept;
- cost adds up: every run, rerun, scoring and LLM call in the log was paid for, rival or not, so each
  adds its device-seconds or tokens (a stored message is folded once: the checkpoint says which).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from bus.events import (
    OUTCOME_TYPES,
    CampaignStarted,
    CampaignStopped,
    Event,
    LLMSpent,
    ReplicateFinished,
    SlotClaimed,
    SpecialistJoined,
    TrialFinished,
    TrialProposed,
    TrialScored,
    TrialStarted,
    _TrialOutcome,
)

TrialKey = tuple[str, str]  # campaign_id, trial_id

_json = msgspec.json.encode


def _text(value) -> str:
    return _json(value).decode()


class Rows:
    """The rows one batch touches: those the file already has (read before the fold) and those the
    batch creates, in the order they were created (their insertion order in the table)."""

    def __init__(self, campaigns: dict[str, dict], trials: dict[TrialKey, dict], *, new_campaign: dict,
                 new_trial: dict):
        self.campaigns = campaigns
        self.trials = trials
        # Every column with the schema's default, in the schema's order, which every row keeps.
        self.new_campaign = new_campaign
        self.new_trial = new_trial
        # Insert-only: the first row of a key wins, including over one already in the file.
        self.specialists: list[tuple] = []
        self.gates: list[tuple] = []
        self.claims: list[tuple] = []


def fold(rows: Rows, event: Event, seq: int) -> None:
    """Apply one event to the rows (events that change no row, such as a confirmation request, do nothing)."""
    apply = _FOLDS.get(type(event))
    if apply is not None:
        apply(rows, event, seq)


def named_rows(events: Iterable[Event]) -> tuple[set[str], dict[str, set[str]]]:
    """The campaigns, and each campaign's trials, whose rows these events may change."""
    campaigns: set[str] = set()
    trials: dict[str, set[str]] = {}
    for event in events:
        kind = type(event)
        if kind is ReplicateFinished:  # a confirmation's cost is its candidate's
            trials.setdefault(event.campaign_id, set()).add(event.confirm_of)
        elif kind in _TRIAL_FOLDS:
            trials.setdefault(event.campaign_id, set()).add(event.trial_id)
        elif kind in _CAMPAIGN_FOLDS:
            campaigns.add(event.campaign_id)
    return campaigns, trials


# Booleans go in as ints, which SQLite stores them as anyway.


def _campaign_started(rows: Rows, event: CampaignStarted, seq: int) -> None:
    if event.campaign_id not in rows.campaigns:
        rows.campaigns[event.campaign_id] = {
            **rows.new_campaign,
            "campaign_id": event.campaign_id, "task": event.task, "metric": event.metric,
            "direction": event.direction, "max_trials": event.max_trials, "arm": event.arm, "noise": event.noise,
            "started_at": event.occurred_at, "started_seq": seq, "bundle_sha256": event.bundle.sha256,
            "spec": _text(event.spec), "stop_rules": _text(event.stop_rules), "budgets": _text(event.budgets),
            "prices": _text(event.prices),
        }


def _campaign_stopped(rows: Rows, event: CampaignStopped, seq: int) -> None:
    row = rows.campaigns.get(event.campaign_id)
    if row is not None and row["stopped_at"] is None:
        row["stopped_at"], row["stop_reason"] = event.occurred_at, event.reason


def _llm_spent(rows: Rows, event: LLMSpent, seq: int) -> None:
    row = rows.campaigns.get(event.campaign_id)
    if row is not None:
        row["unproposed_tokens"] += event.tokens_in + event.tokens_out
        row["unproposed_usd"] += event.cost_usd


def _slot_claimed(rows: Rows, event: SlotClaimed, seq: int) -> None:
    rows.claims.append((event.campaign_id, event.slot, event.trial_id, event.occurred_at))


def _specialist_joined(rows: Rows, event: SpecialistJoined, seq: int) -> None:
    rows.specialists.append((event.campaign_id, event.specialist, event.surface, event.policy, event.occurred_at))


def _trial_proposed(rows: Rows, event: TrialProposed, seq: int) -> None:
    key = (event.campaign_id, event.trial_id)
    if key not in rows.trials:
        rows.trials[key] = {
            **rows.new_trial,
            "campaign_id": event.campaign_id, "trial_id": event.trial_id, "proposed_seq": seq,
            "specialist": event.specialist, "surface": event.surface, "policy": event.policy,
            "parent_id": event.parent_id, "hypothesis": event.hypothesis, "expected_delta": event.expected_delta,
            "diff": event.diff, "shown_ids": _text(event.shown_ids), "params": _text(event.params),
            "model": event.model, "tokens_in": event.tokens_in, "tokens_out": event.tokens_out,
            "latency_s": event.latency_s, "cost_usd": event.cost_usd, "proposed_at": event.occurred_at,
            "slot": event.slot,
        }


def _trial_started(rows: Rows, event: TrialStarted, seq: int) -> None:
    row = rows.trials.get((event.campaign_id, event.trial_id))
    if row is not None and row["attempts"] <= event.attempt:
        row["started_at"], row["executor"], row["attempts"] = event.occurred_at, event.executor, event.attempt


def _trial_finished(rows: Rows, event: TrialFinished, seq: int) -> None:
    row = rows.trials.get((event.campaign_id, event.trial_id))
    _add_device_seconds(row, event)
    if row is not None and row["outcome"] is None:
        row.update(
            finished_at=event.occurred_at, commit_sha=event.commit, exit_code=event.exit_code, signal=event.signal,
            timed_out=int(event.timed_out), wall_s=event.wall_s, peak_rss_mb=event.peak_rss_mb,
            log_tail=event.log_tail,
        )


def _replicate_finished(rows: Rows, event: ReplicateFinished, seq: int) -> None:
    _add_device_seconds(rows.trials.get((event.campaign_id, event.confirm_of)), event)


def _add_device_seconds(row: dict | None, event: TrialFinished | ReplicateFinished) -> None:
    if row is not None:
        spent = event.device_s or {"cpu": event.cpu_s}  # events from before device_s
        row["device_cpu_s"] += spent.get("cpu", 0.0)
        row["device_cuda_s"] += spent.get("cuda", 0.0)


def _trial_outcome(rows: Rows, event: _TrialOutcome, seq: int) -> None:
    row = rows.trials.get((event.campaign_id, event.trial_id))
    if row is not None and isinstance(event, TrialScored):
        row["eval_s"] += event.eval_s
    if row is None or row["outcome"] is not None:
        return
    ev = event.evidence
    row.update(
        outcome=type(event).__name__, label=event.label, outcome_seq=seq, outcome_at=event.occurred_at,
        evidence_stage=ev.stage, evidence_gate=ev.gate, evidence_measured=ev.measured, evidence_limit=ev.limit,
        evidence_frame=ev.frame, evidence_message=ev.message,
    )
    if not isinstance(event, TrialScored):
        return
    score, incumbent = event.score, event.incumbent_score
    row.update(
        score=score, metrics=_text(event.metrics), incumbent_id=event.incumbent_id, incumbent_score=incumbent,
        delta=score - incumbent if score is not None and incumbent is not None else None, noise=event.noise,
    )
    rows.gates += [
        (row["campaign_id"], row["trial_id"], gate.gate, int(gate.passed), gate.measured, gate.limit, gate.detail)
        for gate in event.gates
    ]


_CAMPAIGN_FOLDS = {CampaignStarted: _campaign_started, CampaignStopped: _campaign_stopped, LLMSpent: _llm_spent}
_TRIAL_FOLDS = {
    TrialProposed: _trial_proposed, TrialStarted: _trial_started, TrialFinished: _trial_finished,
    ReplicateFinished: _replicate_finished,
    **{outcome: _trial_outcome for outcome in OUTCOME_TYPES},
}
_FOLDS = {**_CAMPAIGN_FOLDS, SpecialistJoined: _specialist_joined, SlotClaimed: _slot_claimed, **_TRIAL_FOLDS}
