"""Realistic event logs for the projection tests: a campaign as the roles would log it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bus.connection import Bus
from bus.events import (
    CampaignStarted,
    Event,
    Evidence,
    GateVerdict,
    ObjectRef,
    SpecialistJoined,
    TrialAbandoned,
    TrialFinished,
    TrialProposed,
    TrialRejected,
    TrialScored,
    TrialStarted,
)

SPECIALISTS = ("tpe-optimizer", "tpe-architecture")
# What happens to trial i: i % len(OUTCOMES) picks one, so every kind of outcome recurs.
OUTCOMES = ("keep", "discard", "within_noise", "invalid_edit", "crash", "harness_abort")


def campaign_started(campaign: str, *, direction: str = "min", noise: float = 0.03) -> CampaignStarted:
    return CampaignStarted(
        event_id=f"{campaign}-started",
        campaign_id=campaign,
        producer="test",
        task="digits-speedrun",
        metric="train_s",
        direction=direction,
        max_trials=1000,
        bundle=ObjectRef(name="bundles/test.tar.gz", size=3, sha256="0" * 64),
        noise=noise,
        spec={"name": "digits-speedrun"},
    )


def proposed(campaign: str, trial: str, parent: str | None, specialist: str = "baseline") -> TrialProposed:
    return TrialProposed(
        event_id=f"{campaign}-{trial}-proposed",
        campaign_id=campaign,
        producer=specialist,
        trial_id=trial,
        specialist=specialist,
        surface="optimizer",
        parent_id=parent,
        hypothesis=f"{trial}: a larger learning rate converges in fewer epochs",
        diff="" if parent is None else "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-LR = 0.1\n+LR = 0.2\n",
        params={"LR": 0.2},
        policy="tpe",
    )


def started(campaign: str, trial: str, attempt: int = 1) -> TrialStarted:
    """Attempt n runs on executor-n: a redelivery goes to another executor."""
    return TrialStarted(
        event_id=f"{campaign}-{trial}-started-{attempt}", campaign_id=campaign, producer=f"executor-{attempt}",
        trial_id=trial, executor=f"executor-{attempt}", attempt=attempt,
    )


def finished(campaign: str, trial: str, exit_code: int = 0) -> TrialFinished:
    return TrialFinished(
        event_id=f"{campaign}-{trial}-finished", campaign_id=campaign, producer="executor-1", trial_id=trial,
        executor="executor-1", commit="ab" * 20, exit_code=exit_code, wall_s=4.2, peak_rss_mb=310.0,
        log_tail="epoch 3 acc 0.97\n",
    )


def scored(
    campaign: str, trial: str, label: str, score: float | None, incumbent: tuple[str, float] | None,
    *, accuracy: float = 0.97,
) -> TrialScored:
    return TrialScored(
        event_id=f"{campaign}-{trial}-scored",
        campaign_id=campaign,
        producer="evaluator-1",
        trial_id=trial,
        label=label,
        score=score,
        metrics={"accuracy": accuracy} if score is not None else {},
        gates=[
            GateVerdict(gate="accuracy", passed=accuracy >= 0.96, measured=accuracy, limit=0.96),
            GateVerdict(gate="seeds", passed=True, measured=3, limit=3),
        ],
        incumbent_id=incumbent[0] if incumbent else None,
        incumbent_score=incumbent[1] if incumbent else None,
        noise=0.03,
        evidence=Evidence(stage="train", message="Traceback ... ZeroDivisionError", frame="train.py:12")
        if label == "crash" else Evidence(),
    )


def rejected(campaign: str, trial: str) -> TrialRejected:
    return TrialRejected(
        event_id=f"{campaign}-{trial}-rejected", campaign_id=campaign, producer="executor-1", trial_id=trial,
        label="invalid_edit", evidence=Evidence(stage="apply", message="hunk 1 does not apply"),
    )


def abandoned(campaign: str, trial: str) -> TrialAbandoned:
    return TrialAbandoned(
        event_id=f"{campaign}-{trial}-abandoned", campaign_id=campaign, producer="evaluator-1", trial_id=trial,
        evidence=Evidence(stage="execute", message="delivered 4 times without a finish"),
    )


def campaign_events(campaign: str = "c1", trials: int = 20) -> list[Event]:
    """CampaignStarted, two specialists, the baseline, then `trials` trials cycling through OUTCOMES."""
    events: list[Event] = [campaign_started(campaign)]
    events += [
        SpecialistJoined(event_id=f"{campaign}-{name}-joined", campaign_id=campaign, producer=name,
                         specialist=name, surface="optimizer", policy="tpe")
        for name in SPECIALISTS
    ]
    best = ("baseline", 10.0)
    events += [proposed(campaign, "baseline", None), started(campaign, "baseline"), finished(campaign, "baseline"),
               scored(campaign, "baseline", "keep", best[1], None)]
    for i in range(trials):
        trial, outcome = f"t{i}", OUTCOMES[i % len(OUTCOMES)]
        events.append(proposed(campaign, trial, best[0], SPECIALISTS[i % len(SPECIALISTS)]))
        if outcome == "invalid_edit":
            events.append(rejected(campaign, trial))
            continue
        events.append(started(campaign, trial))
        if outcome == "harness_abort":
            events += [started(campaign, trial, attempt=2), abandoned(campaign, trial)]
            continue
        events.append(finished(campaign, trial, exit_code=1 if outcome == "crash" else 0))
        score = {"keep": best[1] * 0.9, "discard": best[1] * 1.2, "within_noise": best[1] * 1.01}.get(outcome)
        events.append(scored(campaign, trial, outcome, score, best))
        if outcome == "keep":
            best = (trial, score)
    return events


async def publish_all(bus: Bus, events: list[Event]) -> None:
    for event in events:
        await bus.publish(event)


def dump(path: Path) -> list[str]:
    """Everything a lineage file holds (schema and rows), without the file's own page layout."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()
