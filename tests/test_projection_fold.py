"""The lineage fold over a real log: rows, gates, counters and the status summary it gives."""

from __future__ import annotations

import asyncio

import pytest
from projection_events import (
    abandoned,
    campaign_started,
    dump,
    finished,
    proposed,
    publish_all,
    rejected,
    scored,
    started,
)

from bus.connection import Bus
from bus.events import GateVerdict, SpecialistJoined, TrialScored
from projections import views
from projections.follow import catch_up
from projections.lineage import Lineage

C = "c1"
# Messages on arx.ev. subjects that no version of the fold can use: each is skipped and counted.
UNUSABLE = {
    f"arx.ev.{C}.trial.t9.proposed": b"\x00\xffnot json at all",
    f"arx.ev.{C}.trial.t1.reviewed": b'{"type": "TrialReviewed", "event_id": "r1", "campaign_id": "c1"}',
    f"arx.ev.{C}.trial.t1.started": b'{"type": "TrialStarted", "campaign_id": "c1"}',  # no trial_id
    # An integer past what SQLite stores (64 bits, signed): the event does not decode.
    f"arx.ev.{C}.trial.t5.started": b'{"type": "TrialStarted", "event_id": "big", "campaign_id": "c1",'
    b' "trial_id": "t5", "executor": "x", "attempt": 18446744073709551615}',
}


def log_of_a_campaign() -> list:
    joined = [
        SpecialistJoined(event_id=f"{name}-joined", campaign_id=C, specialist=name, surface=surface, policy="tpe")
        for name, surface in (("tpe-optimizer", "optimizer"), ("tpe-architecture", "architecture"))
    ]
    base = ("baseline", 10.0)
    return [
        campaign_started(C),
        *joined,
        proposed(C, "baseline", None),
        started(C, "baseline"), finished(C, "baseline"), scored(C, "baseline", "keep", 10.0, None),
        proposed(C, "t1", "baseline", "tpe-optimizer"),
        started(C, "t1"), finished(C, "t1"), scored(C, "t1", "keep", 8.0, base),
        proposed(C, "t2", "t1", "tpe-optimizer"),
        started(C, "t2"), finished(C, "t2"), scored(C, "t2", "discard", 9.0, ("t1", 8.0)),
        proposed(C, "t3", "t1", "tpe-architecture"),
        rejected(C, "t3"),
        proposed(C, "t4", "t1", "tpe-architecture"),
        started(C, "t4", attempt=2), started(C, "t4", attempt=1),  # redeliveries logged out of order
        abandoned(C, "t4"),
        proposed(C, "t5", "t1", "tpe-optimizer"),
        started(C, "t5"), finished(C, "t5"), scored(C, "t5", "disqualified", 7.0, ("t1", 8.0), accuracy=0.9),
        proposed(C, "t6", "t1", "tpe-architecture"),  # still in flight
    ]


def rival_outcomes() -> list:
    """Second outcomes that reached the log without the first-writer check: the first one stands."""
    return [
        TrialScored(event_id="t1-rival", campaign_id=C, trial_id="t1", label="discard", score=99.0,
                    gates=[GateVerdict(gate="size", passed=False, measured=70, limit=64)]),
        abandoned(C, "t2"),
    ]


async def publish_log(bus: Bus) -> None:
    """The campaign with the unusable messages in its midst (right after t5 is proposed)."""
    events = log_of_a_campaign()
    await publish_all(bus, events[:-4])
    for subject, data in UNUSABLE.items():
        await bus.js.publish(subject, data)
    await publish_all(bus, events[-4:])
    await publish_all(bus, rival_outcomes())


def fold_the_log(path) -> Lineage:
    async def run() -> Lineage:
        async with await Bus.connect(role="admin") as bus:
            await publish_log(bus)
            lineage = Lineage(path)
            await catch_up(bus, lineage)
            assert lineage.checkpoint == await bus.last_seq()
            return lineage

    return asyncio.run(run())


@pytest.fixture
def lineage(arx_env, tmp_path):
    lineage = fold_the_log(tmp_path / "lineage.db")
    yield lineage
    lineage.close()


def trial(lineage: Lineage, trial_id: str) -> dict:
    (row,) = lineage.query("SELECT * FROM trials WHERE campaign_id = ? AND trial_id = ?", (C, trial_id))
    return row


def test_every_fact_lands_in_its_row(lineage):
    (campaign,) = lineage.query("SELECT * FROM campaigns")
    assert (campaign["task"], campaign["direction"], campaign["noise"]) == ("digits-speedrun", "min", 0.03)
    assert campaign["spec"] == '{"name":"digits-speedrun"}'
    assert [r["specialist"] for r in lineage.query("SELECT * FROM specialists ORDER BY specialist")] == [
        "tpe-architecture", "tpe-optimizer"
    ]
    t1 = trial(lineage, "t1")
    assert (t1["outcome"], t1["label"], t1["score"], t1["incumbent_id"], t1["delta"]) == (
        "TrialScored", "keep", 8.0, "baseline", -2.0
    )
    assert (t1["parent_id"], t1["specialist"], t1["exit_code"], t1["commit_sha"]) == (
        "baseline", "tpe-optimizer", 0, "ab" * 20
    )
    assert t1["params"] == '{"LR":0.2}'
    t3 = trial(lineage, "t3")
    assert (t3["outcome"], t3["label"], t3["evidence_stage"], t3["started_at"]) == (
        "TrialRejected", "invalid_edit", "apply", None
    )
    t4 = trial(lineage, "t4")
    assert (t4["outcome"], t4["label"], t4["attempts"], t4["executor"]) == (
        "TrialAbandoned", "harness_abort", 2, "executor-2"
    )
    t5 = trial(lineage, "t5")
    assert (t5["label"], t5["attempts"], t5["score"]) == ("disqualified", 1, 7.0)  # the 2**64 attempt skipped
    assert trial(lineage, "t6")["outcome"] is None


def test_a_second_outcome_overrides_nothing(lineage):
    t1, t2 = trial(lineage, "t1"), trial(lineage, "t2")
    assert (t1["label"], t1["score"]) == ("keep", 8.0)
    assert (t2["outcome"], t2["label"], t2["score"]) == ("TrialScored", "discard", 9.0)
    gates = lineage.query("SELECT trial_id, gate, passed, measured FROM gates ORDER BY trial_id, gate")
    assert [(g["trial_id"], g["gate"]) for g in gates] == [
        (t, gate) for t in ("baseline", "t1", "t2", "t5") for gate in ("accuracy", "seeds")
    ]
    assert [g for g in gates if g["trial_id"] == "t5" and g["gate"] == "accuracy"] == [
        {"trial_id": "t5", "gate": "accuracy", "passed": 0, "measured": 0.9}
    ]


def test_unusable_messages_are_skipped_and_counted(lineage):
    assert sum(lineage.skipped().values()) == len(UNUSABLE)
    assert not lineage.query("SELECT * FROM trials WHERE trial_id = 't9'")


def test_summary_numbers(lineage):
    summary = views.summary(lineage)
    assert summary["campaign"] == C
    assert summary["labels"] == {"keep": 2, "discard": 1, "invalid_edit": 1, "harness_abort": 1, "disqualified": 1}
    assert (summary["trials_proposed"], summary["trials_scored"], summary["in_flight"]) == (7, 4, 1)
    assert (summary["baseline_score"], summary["best_score"], summary["best_trial"]) == (10.0, 8.0, "t1")
    assert summary["improvement_pct"] == -20.0  # signed: the time went down by a fifth
    assert summary["noise"] == 0.03
    assert [row["trial_id"] for row in summary["recent"]] == ["t5", "t4", "t3", "t2", "t1", "baseline"]
    assert views.counted_outcomes(lineage, C) == 5
    assert views.in_flight(lineage, C, "tpe-architecture") == 1
    assert views.in_flight(lineage, C, "tpe-optimizer") == 0
    assert views.summary(lineage, "no-such-campaign") is None


def test_improvement_is_signed_against_the_baseline():
    assert views.improvement_pct(10.0, 8.0) == -20.0
    assert views.improvement_pct(0.8, 0.9) == 12.5
    assert views.improvement_pct(-4.0, -2.0) == 50.0
    assert views.improvement_pct(0.0, 1.0) is None
    assert views.improvement_pct(None, 1.0) is None


def test_applying_a_batch_again_changes_nothing(arx_env, tmp_path):
    async def batches() -> list:
        async with await Bus.connect(role="admin") as bus:
            await publish_log(bus)
            return [batch async for batch in bus.read(batch=7)]

    log = asyncio.run(batches())
    once = Lineage(tmp_path / "once.db")
    for batch in log:
        once.apply(batch)
    twice = Lineage(tmp_path / "twice.db")
    for i, batch in enumerate(log):
        twice.apply(batch)
        assert twice.apply(batch) == 0
        if i:
            assert twice.apply(log[i - 1] + batch) == 0  # overlapping a batch already folded
    assert twice.checkpoint == once.checkpoint == log[-1][-1].seq
    assert twice.skipped() == once.skipped() and sum(once.skipped().values()) == len(UNUSABLE)
    assert dump(tmp_path / "twice.db") == dump(tmp_path / "once.db")
