"""Stop rules: a plateau, a failure storm and a deadline each stop a real campaign, with the reason in the log."""

from __future__ import annotations

import asyncio

import pytest

from bus.connection import Bus
from bus.events import CampaignStopped, StopRules
from cluster import Cluster
from projections.stop_rules import Recent, parse_duration, parse_storm, progress, rules_from, stop_reason
from tiny_tasks import WAIT_S, edit, proposal, use_tasks, wait_event, write_task


def counted(*labels: str) -> Recent:
    return Recent(list(labels), [], 0.0)


def outcomes(*labels: str) -> Recent:
    return Recent([], list(labels), 0.0)


def test_a_plateau_is_counted_outcomes_without_a_keep():
    rules = StopRules(plateau=3)
    assert stop_reason(rules, counted("discard", "crash", "discard")) == "plateau: no keep in the last 3 trials"
    assert stop_reason(rules, counted("discard", "discard", "keep")) is None
    assert stop_reason(rules, counted("discard", "discard")) is None  # not 3 yet
    assert progress(rules, counted("discard", "discard", "keep"))[0]["now"] == 2


def test_a_failure_storm_is_one_kind_of_failure_above_its_share():
    rules = rules_from(None, "50/4", None)
    assert (rules.storm_percent, rules.storm_window) == (50.0, 4)
    assert stop_reason(rules, outcomes("crash", "crash", "crash", "keep")) == (
        "failure storm: 3 of the last 4 trials ended in crash")
    assert stop_reason(rules, outcomes(*["harness_abort"] * 3, "keep")).endswith("ended in harness_abort")
    # Failing in different ways is not a storm of one kind; exactly the share is not above it.
    assert stop_reason(rules, outcomes("crash", "disqualified", "train_budget_overrun", "keep")) is None
    assert stop_reason(rules, outcomes("crash", "crash", "keep", "keep")) is None
    assert stop_reason(rules, outcomes("crash", "crash", "crash")) is None  # fewer outcomes than the window


def test_a_deadline_and_bad_flags():
    assert stop_reason(StopRules(deadline_s=60), Recent([], [], 61.0)).startswith("deadline: 61s")
    assert stop_reason(StopRules(deadline_s=60), Recent([], [], 59.0)) is None
    assert parse_duration("45m") == 2700 and parse_duration("1.5h") == 5400
    for bad in ("0s", "soon", "5"):
        with pytest.raises(ValueError, match="--deadline"):
            parse_duration(bad)
    for bad in ("100/5", "50", "50/0", "x/3"):
        with pytest.raises(ValueError, match="--failure-storm"):
            parse_storm(bad)
    with pytest.raises(ValueError, match="--plateau 0"):
        rules_from(0, None, None)


def test_each_rule_stops_a_real_campaign_with_its_reason(arx_env, tmp_path, monkeypatch):
    use_tasks(monkeypatch, tmp_path / "tasks")
    write_task(tmp_path / "tasks", "flat")
    env = {**arx_env, "ARX_TASKS_PATH": str(tmp_path / "tasks")}
    cluster = Cluster(env, tmp_path / "logs")
    cluster.start("evaluator", "evaluator", "--name", "evaluator-1")
    cluster.start("executor", "executor", "--name", "executor-1")
    try:
        for campaign, rule in (("plateau", ["--plateau", "3"]), ("storm", ["--failure-storm", "50/2"]),
                               ("deadline", ["--deadline", "2s"])):
            cluster.command("campaign", "start", "--task", "flat", "--trials", "20", "--campaign", campaign, *rule)

        async def run() -> dict[str, CampaignStopped]:
            async with await Bus.connect(role="admin") as bus:
                for i in range(6):  # worse than the baseline's 5.0: nothing to keep
                    await bus.publish(proposal("plateau", f"t{i}", edit("VALUE = 5.0", f"VALUE = {6 + i}.0")))
                    await bus.publish(proposal("storm", f"t{i}", edit("VALUE = 5.0", "VALUE = 1 / 0")))
                return {c: await wait_event(bus, c, "campaign", c, "stopped", timeout=WAIT_S)
                        for c in ("plateau", "storm", "deadline")}

        stops = asyncio.run(run())
        assert not cluster.failed()
    finally:
        cluster.stop_all()
    # Stopped at the rule, long before the 20 trials: the baseline plus the outcomes the rule needed.
    assert stops["plateau"].reason == "plateau: no keep in the last 3 trials" and 4 <= stops["plateau"].trials < 20
    assert stops["storm"].reason == "failure storm: 2 of the last 2 trials ended in crash"
    assert stops["deadline"].reason.startswith("deadline: ") and stops["deadline"].trials <= 1
    # `arx status` says how close the campaign came to its rule.
    (plateau,) = cluster.status("plateau")["stop_rules"]
    assert (plateau["rule"], plateau["limit"], plateau["now"]) == ("plateau", 3, 3)
