"""The lineage's read model (projections.views, reads and view_reads) on lineage files folded from a
realistic campaign's events: each question's rows, order, limits and NULLs."""

from __future__ import annotations

import pytest
from projection_events import abandoned, campaign_events, campaign_started, proposed, scored

from bus.connection import StoredMessage
from bus.events import CampaignStopped, Event, TrialProposed, encode
from projections import reads, view_reads, views
from projections.lineage import Lineage

C = "c1"
# campaign_events: the baseline (10.0) and every sixth trial from t0 are kept, each on the last kept one.
KEPT_CHAIN = ["t18", "t12", "t6", "t0", "baseline"]


def fold(lineage: Lineage, events: list[Event]) -> None:
    start = lineage.checkpoint
    lineage.apply([StoredMessage(start + i, e.subject, encode(e)) for i, e in enumerate(events, 1)])


def trial(trial_id: str, parent: str | None, *, policy: str = "repair", shown: list[str] = (), cost: float = 0.0,
          params: dict | None = None) -> TrialProposed:
    return TrialProposed(
        event_id=f"{trial_id}-proposed", campaign_id=C, producer="agent", trial_id=trial_id, specialist=policy,
        surface="*", parent_id=parent, hypothesis=f"{trial_id} idea", diff=f"diff of {trial_id}",
        shown_ids=list(shown), params=params or {}, policy=policy, cost_usd=cost,
    )


@pytest.fixture
def lineage(tmp_path):
    lineage = Lineage(tmp_path / "lineage.db", durable=False)
    fold(lineage, campaign_events(C, trials=20))
    yield lineage
    lineage.close()


def test_kept_trials_in_the_incumbents_order(lineage):
    assert [t.trial_id for t in views.kept(lineage, C, "min", 3)] == ["t18", "t12", "t6"]
    assert [t.trial_id for t in views.kept(lineage, C, "max", 2)] == ["baseline", "t0"]
    # A tie on score goes to the earlier outcome.
    fold(lineage, [proposed(C, "tie", "t18"), scored(C, "tie", "keep", views.kept(lineage, C, "min", 1)[0].score,
                                                     ("t18", 1.0))])
    best, second = views.kept(lineage, C, "min", 2)
    assert (best.trial_id, second.trial_id) == ("t18", "tie")
    assert views.incumbent(lineage, C, "min") == views.Incumbent(best.trial_id, best.score)
    assert best.parent_id == "t12" and best.label == "keep" and best.hypothesis.startswith("t18: ")
    assert views.kept(lineage, "nothing", "min", 3) == [] and views.incumbent(lineage, "nothing", "min") is None


def test_the_root_is_the_first_trial_without_a_parent(lineage):
    fold(lineage, [trial("second-root", None)])
    root = views.root_trial(lineage, C)
    assert (root.trial_id, root.parent_id, root.score) == ("baseline", None, 10.0)
    assert views.root_trial(lineage, "nothing") is None


def test_ancestors_nearest_first_up_to_the_steps(lineage):
    assert [t.trial_id for t in views.ancestors(lineage, C, "t18", 100)] == KEPT_CHAIN
    assert [t.trial_id for t in views.ancestors(lineage, C, "t18", 2)] == KEPT_CHAIN[:3]
    assert [t.trial_id for t in views.ancestors(lineage, C, "t19", 0)] == ["t19"]
    assert views.ancestors(lineage, C, "unknown", 100) == []


def test_the_running_campaign_is_the_latest_not_stopped(lineage):
    fold(lineage, [campaign_started("c2")])
    assert views.running_campaign(lineage) == "c2"
    assert views.running_campaign(lineage, "digits-speedrun") == "c2"
    assert views.running_campaign(lineage, "another-task") is None
    fold(lineage, [CampaignStopped(campaign_id="c2", producer="test", reason="done")])
    assert views.running_campaign(lineage) == C
    assert reads.running_campaigns(lineage) == [reads.Running(C, 1000)]


def test_a_specialists_trial_count(lineage):
    assert views.trial_count(lineage, C, "tpe-optimizer") == 10
    assert views.trial_count(lineage, C, "baseline") == 1
    assert views.trial_count(lineage, C, "nobody") == 0


def test_single_trial_questions(lineage):
    fold(lineage, [trial("pending", "t18", cost=0.25), trial("cheap", "t18", cost=0.5)])
    assert reads.has_trial(lineage, C, "pending") and not reads.has_trial(lineage, C, "unknown")
    assert reads.has_outcome(lineage, C, "t3") and not reads.has_outcome(lineage, C, "pending")
    assert not reads.has_outcome(lineage, C, "unknown")
    assert reads.has_joined(lineage, C, "tpe-optimizer") and not reads.has_joined(lineage, C, "repair")
    assert reads.step(lineage, C, "pending") == reads.Step("t18", "diff of pending")
    assert reads.step(lineage, C, "baseline") == reads.Step(None, "")
    assert reads.step(lineage, C, "unknown") is None
    assert reads.campaign_cost(lineage, C) == 0.75 and reads.campaign_cost(lineage, "nothing") == 0


def test_what_policies_tried(lineage):
    fold(lineage, [trial("a", "t19", policy="catalog"), trial("b", "t19", policy="catalog"), abandoned(C, "b")])
    assert reads.tried_diffs(lineage, C, "t19", 100) == {"diff of a"}  # b was lost to the harness
    assert len(reads.tried_diffs(lineage, C, "t12", 1)) == 1
    tried = reads.policy_trials(lineage, C, "tpe", 3)
    assert [t.trial_id for t in tried] == ["t19", "t18", "t16"]  # t17 was lost to the harness
    assert tried[0].label == "discard" and tried[0].hypothesis.startswith("t19: ")
    fold(lineage, [trial("r1", "t12", shown=["t16", "t12"]), trial("m1", "t18", policy="combiner", shown=["t18"])])
    assert reads.first_shown(lineage, C, "repair") == [("t16", "t12")]
    assert reads.first_shown(lineage, C, "combiner") == [("t18", None)]


def test_failures_on_a_parent_and_what_a_repair_repaired(lineage):
    found = reads.failures_on(lineage, C, "t12", ("crash", "invalid_edit"), 10)
    assert [(f.trial_id, f.label) for f in found] == [("t16", "crash"), ("t15", "invalid_edit")]
    assert found[0].parent_id == "t12" and found[0].policy == "tpe" and found[0].evidence_gate is None
    assert [f.trial_id for f in reads.failures_on(lineage, C, "t12", ("crash", "invalid_edit"), 1)] == ["t16"]
    fold(lineage, [trial("r1", "t12", shown=["t16", "t12"])])
    assert reads.origin(lineage, C, '["t16", "t12"]') == reads.Origin("tpe", "[]")
    assert reads.origin(lineage, C, '["unknown"]') is None and reads.origin(lineage, C, None) is None


def test_knob_history_keeps_in_flight_first_then_recent_outcomes(lineage):
    fold(lineage, [trial("free-form", "t18"), trial("in-flight", "t18", params={"LR": 0.3})])
    history = reads.knob_history(lineage, C, 3)
    # The in-flight trial with knob values, then the latest outcomes, returned in proposal order.
    assert [t.trial_id for t in history] == ["t18", "t19", "in-flight"]
    assert history[-1] == reads.KnobTrial("in-flight", "t18", '{"LR":0.3}', None, None)
    assert "free-form" not in [t.trial_id for t in reads.knob_history(lineage, C, 100)]


def test_the_prompt_views_parts(lineage):
    fold(lineage, [trial("pending", "t12")])
    assert [t.trial_id for t in view_reads.children(lineage, C, "t12", 3)] == ["pending", "t18", "t17"]
    assert view_reads.children_count(lineage, C, "t12") == 7
    assert [t.trial_id for t in view_reads.recent_outcomes(lineage, C, 2)] == ["t19", "t18"]
    assert [t.trial_id for t in view_reads.pending(lineage, C, 5)] == ["pending"]
    failures = view_reads.own_failures(lineage, C, "tpe-optimizer", 200, 2)
    assert [(f.trial.trial_id, f.trial.label) for f in failures] == [("t16", "crash"), ("t10", "crash")]
    evidence = (failures[0].stage, failures[0].frame, failures[0].log_tail)
    assert evidence == ("train", "train.py:12", "epoch 3 acc 0.97\n")
    # t16 is the specialist's 2nd most recent outcome: a window of 1 leaves it out.
    assert view_reads.own_failures(lineage, C, "tpe-optimizer", 1, 2) == []
    deltas = view_reads.own_scored_deltas(lineage, C, "tpe-optimizer", 200, 2)
    assert deltas == pytest.approx([7.29 * 0.9 - 7.29, 7.29 * 1.01 - 7.29])  # t18 keep, t14 within_noise
