"""The repair specialist: each failure label's evidence turns into the fix it points to, proposed once."""

from __future__ import annotations

import json
import math

import anyio
import pytest
from agent_helpers import (
    BASELINE_FILES,
    TASK,
    folded,
    propose,
    start_campaign,
    stays_at,
    stop_campaign,
    wait_for_trials,
)

from agents.edits import apply_diff, knob_values, set_knob, unified_diff
from agents.repair import RepairSpecialist
from agents.trees import Trees
from bus.connection import Bus
from bus.events import Evidence, TrialScored
from projections import views

pytestmark = pytest.mark.anyio
TRAIN, MODEL = BASELINE_FILES["train.py"], BASELINE_FILES["model.py"]


def repair(surface: str = "*") -> RepairSpecialist:
    return RepairSpecialist(specialist="repair", surface=surface, poll_s=0.1)


async def outcome(bus: Bus, trial_id: str, label: str, score=None, *, c: str = "c1", **evidence) -> None:
    event = TrialScored(
        event_id=f"{c}-{trial_id}-outcome", campaign_id=c, trial_id=trial_id, label=label, score=score,
        evidence=Evidence(stage="gates", **evidence),
    )
    await bus.publish(event)


async def failed_child(bus: Bus, trial_id: str, edits: dict[str, dict[str, float]], label: str, *, c: str = "c1",
                       **evidence) -> None:
    """A trial on the baseline that sets knobs ({path: {knob: value}}), with the given failure outcome."""
    diff = ""
    for path, knobs in edits.items():
        new = BASELINE_FILES[path]
        for name, value in knobs.items():
            new = set_knob(new, name, value)
        diff += unified_diff(path, BASELINE_FILES[path], new)
    await propose(bus, c, trial_id, "baseline", diff, specialist="tpe-optimizer")
    await outcome(bus, trial_id, label, c=c, **evidence)


async def proposal_now(bus: Bus, agent: RepairSpecialist | None = None, c: str = "c1"):
    lineage = await folded(bus)
    agent = agent or repair()
    context = await agent.context(lineage, views.campaign(lineage, c), TASK, Trees(bus, lineage, c))
    return await agent.propose(context)


async def tree_after(bus: Bus, proposal) -> dict[str, str]:
    lineage = await folded(bus)
    return apply_diff(await Trees(bus, lineage, "c1").tree(proposal.parent_id), proposal.diff)


@pytest.fixture
async def campaign(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1", max_trials=50)
        await outcome(bus, "baseline", "keep", 10.0)
        yield bus


async def test_over_the_time_budget_cuts_epochs_by_the_measured_ratio(campaign):
    await failed_child(campaign, "slow", {"train.py": {"EPOCHS": 40}}, "train_budget_overrun",
                       gate="train_s", measured=75.0, limit=60.0)
    proposal = await proposal_now(campaign)
    assert proposal.parent_id == "slow" and proposal.shown_ids == ["slow", "baseline"]
    assert knob_values(await tree_after(campaign, proposal), TASK.spec.knobs)["EPOCHS"] == 26  # 40 * 60/75 * 0.8
    assert "train_budget_overrun: train_s 75 vs limit 60" in proposal.hypothesis
    assert "EPOCHS 40 -> 26" in proposal.hypothesis


async def test_over_the_size_cap_shrinks_the_width(campaign):
    await failed_child(campaign, "big", {"model.py": {"HIDDEN": 512}}, "size_blocked",
                       gate="size_mb", measured=10.0, limit=4.0)
    proposal = await proposal_now(campaign)
    assert proposal.parent_id == "big"
    assert knob_values(await tree_after(campaign, proposal), TASK.spec.knobs)["HIDDEN"] == 164  # 512 * 0.4 * 0.8


async def test_a_missed_gate_takes_the_largest_knob_move_halfway_back(campaign):
    await failed_child(campaign, "wild", {"train.py": {"LR": 0.4, "EPOCHS": 28}}, "disqualified",
                       gate="accuracy", measured=0.5, limit=0.96)
    proposal = await proposal_now(campaign)
    assert proposal.parent_id == "baseline"  # the failed edit, adjusted, on the failed trial's parent
    values = knob_values(await tree_after(campaign, proposal), TASK.spec.knobs)
    assert values["LR"] == pytest.approx(math.sqrt(0.01 * 0.4)) and values["EPOCHS"] == 28
    assert proposal.params == values


async def test_a_missed_gate_without_knob_moves_gets_more_capacity(campaign):
    adam = TRAIN.replace("torch.optim.SGD(", "torch.optim.Adam(").replace("momentum=MOMENTUM, ", "")
    await propose(campaign, "c1", "code", "baseline", unified_diff("train.py", TRAIN, adam), specialist="llm")
    await outcome(campaign, "code", "disqualified", gate="accuracy", measured=0.9, limit=0.96)
    proposal = await proposal_now(campaign)
    assert proposal.parent_id == "code"
    tree = await tree_after(campaign, proposal)
    assert "torch.optim.Adam(" in tree["train.py"]
    assert knob_values(tree, TASK.spec.knobs)["EPOCHS"] == 40  # 30 * 1.5, at the knob's high


async def test_repairs_each_failure_once_newest_first_and_only_on_the_incumbent(campaign):
    await failed_child(campaign, "old", {"train.py": {"EPOCHS": 40}}, "train_budget_overrun", gate="train_s",
                       measured=90.0, limit=60.0)
    await failed_child(campaign, "new", {"train.py": {"LR": 0.3}}, "disqualified", gate="accuracy",
                       measured=0.5, limit=0.96)
    await failed_child(campaign, "crashed", {"train.py": {"LR": 0.2}}, "crash")  # no fix for a crash here

    async def steps():
        (first,) = await wait_for_trials(campaign, "c1", "repair", 1)
        assert json.loads(first["shown_ids"])[0] == "new"  # the newest failure first; a crash has no fix here
        await outcome(campaign, first["trial_id"], "discard", 10.5)
        rows = await wait_for_trials(campaign, "c1", "repair", 2)
        assert json.loads(rows[1]["shown_ids"])[0] == "old"
        await outcome(campaign, rows[1]["trial_id"], "keep", 9.0)
        assert await stays_at(campaign, agent, "c1", 2)  # each failure once
        # A failure on the new incumbent is repaired; one on a parent that is no longer the incumbent is not.
        await propose(campaign, "c1", "stale", "baseline", "", specialist="tpe-optimizer")
        await outcome(campaign, "stale", "disqualified", gate="accuracy", measured=0.5, limit=0.96)
        await failed_child_of(campaign, rows[1]["trial_id"], "fresh")
        rows = await wait_for_trials(campaign, "c1", "repair", 3)
        assert json.loads(rows[2]["shown_ids"])[0] == "fresh" and rows[2]["parent_id"] == "fresh"
        assert await stays_at(campaign, agent, "c1", 3)

    agent = repair()
    with anyio.fail_after(40):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.run)
            await steps()
            await stop_campaign(campaign, "c1")
    # A restarted agent reads the same lineage: nothing left to repair.
    assert await proposal_now(campaign) is None


async def failed_child_of(bus: Bus, parent_id: str, trial_id: str) -> None:
    lineage = await folded(bus)
    tree = await Trees(bus, lineage, "c1").tree(parent_id)
    new = set_knob(tree["train.py"], "EPOCHS", 40)
    await propose(bus, "c1", trial_id, parent_id, unified_diff("train.py", tree["train.py"], new), specialist="x")
    await outcome(bus, trial_id, "train_budget_overrun", gate="train_s", measured=61.0, limit=60.0)


async def test_a_surface_repairs_only_with_its_own_knobs_and_no_lineage_sees_no_failures(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        await outcome(bus, "baseline", "keep", 10.0)
        await failed_child(bus, "big", {"model.py": {"HIDDEN": 512}}, "size_blocked", gate="size_mb",
                           measured=10.0, limit=4.0)
        assert await proposal_now(bus, repair("optimizer")) is None  # HIDDEN is the architecture's
        assert (await proposal_now(bus, repair("architecture"))).parent_id == "big"
        # The same failure in a no-lineage campaign: its repair specialist never sees it.
        await start_campaign(bus, "c9", arm="no-lineage")
        await outcome(bus, "baseline", "keep", 10.0, c="c9")
        await failed_child(bus, "big", {"model.py": {"HIDDEN": 512}}, "size_blocked", c="c9", gate="size_mb",
                           measured=10.0, limit=4.0)
        assert await proposal_now(bus, repair("architecture"), c="c9") is None


async def test_a_repair_that_fails_again_is_repaired_again_up_to_a_depth(campaign):
    await failed_child(campaign, "far", {"train.py": {"LR": 0.5}}, "disqualified", gate="accuracy",
                       measured=0.2, limit=0.96)
    agent, failed, lrs = repair(), "far", []
    while (proposal := await proposal_now(campaign, agent)) is not None:
        assert proposal.shown_ids[0] == failed and proposal.parent_id == "baseline"
        lrs.append(proposal.params["LR"])
        failed = f"r{len(lrs)}"
        await campaign.publish(agent._event("c1", failed, proposal.parent_id, proposal))
        await outcome(campaign, failed, "disqualified", gate="accuracy", measured=0.5, limit=0.96)
    # Each repair takes the move halfway back again: 0.5 -> 0.0707 -> 0.0266 -> 0.0163, then it stops.
    assert lrs == pytest.approx([math.sqrt(0.5 * 0.01), (0.5 * 0.01**3) ** 0.25, (0.5 * 0.01**7) ** 0.125])
