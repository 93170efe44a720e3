"""The TPE specialist: its study is the lineage, its edits stay in its surface and bounds, and the
same lineage and seed give the same proposal."""

from __future__ import annotations

import json
import math
import random

import anyio
import pytest
from agent_helpers import (
    BASELINE_FILES,
    BASELINE_PARAMS,
    TASK,
    abandon,
    folded,
    propose,
    score,
    start_campaign,
    stop_campaign,
    trials_of,
    wait_for_trials,
)
from optuna.trial import TrialState

from agents.edits import apply_diff, knob_values, set_knob, unified_diff
from agents.tpe import TPESpecialist, history, surface_knobs
from agents.trees import Trees
from bus.connection import Bus
from projections import views

pytestmark = pytest.mark.anyio
KNOBS = {k.name: k for k in TASK.spec.knobs}
OPTIMIZER = {k.name for k in TASK.spec.knobs if k.path == "train.py"}


def tpe(seed: int = 0, surface: str = "optimizer", **kwargs) -> TPESpecialist:
    return TPESpecialist(specialist=f"tpe-{surface}", surface=surface, seed=seed, poll_s=0.1, **kwargs)


async def context_now(bus: Bus, agent: TPESpecialist, c: str = "c1"):
    lineage = await folded(bus)
    return await agent.context(lineage, views.campaign(lineage, c), TASK, Trees(bus, lineage, c))


def changed_paths(diff: str) -> set[str]:
    return {line[6:] for line in diff.splitlines() if line.startswith("+++ b/")}


async def seed_lineage(bus: Bus, *, baseline_params: bool = True) -> dict[str, str]:
    """A campaign with a scored baseline and trials by another specialist: some kept, some
    disqualified, one lost to the harness and one free-form edit. Returns id -> expected study state."""
    await start_campaign(bus, "c1", baseline_params=baseline_params)
    await score(bus, "c1", "baseline", 10.0)
    rng = random.Random(3)
    expected = {"baseline": "COMPLETE"}
    for i in range(8):
        params = dict(BASELINE_PARAMS, EPOCHS=rng.randint(2, 40), LR=rng.uniform(0.001, 0.5))
        text = set_knob(set_knob(BASELINE_FILES["train.py"], "EPOCHS", params["EPOCHS"]), "LR", params["LR"])
        trial_id = f"o{i}"
        diff = unified_diff("train.py", BASELINE_FILES["train.py"], text)
        await propose(bus, "c1", trial_id, "baseline", diff, params=params)
        kind = "keep" if i < 2 else ["discard", "disqualified", "abandoned"][i % 3]
        if kind == "abandoned":
            await abandon(bus, "c1", trial_id)  # harness_abort: the study must not learn from it
        elif kind == "disqualified":
            await score(bus, "c1", trial_id, None, "disqualified")
            expected[trial_id] = "FAIL"
        else:
            await score(bus, "c1", trial_id, 10.0 - i * 0.1, kind)
            expected[trial_id] = "COMPLETE"
    await propose(bus, "c1", "freeform", "baseline", "", params={})
    await score(bus, "c1", "freeform", 9.9, "discard")
    return expected


async def test_study_is_the_lineage_and_proposals_are_deterministic(arx_env):
    async with await Bus.connect(role="admin") as bus:
        expected = await seed_lineage(bus, baseline_params=False)
        agent = tpe(seed=7)
        context = await context_now(bus, agent)
        knobs = surface_knobs(context)
        assert {k.name for k in knobs} == OPTIMIZER
        trials, ids = history(context, knobs, knob_values(BASELINE_FILES, knobs))
        assert dict(zip(ids, (t.state.name for t in trials))) == expected
        # The baseline proposed no params: the study reads its starting point from the bundle.
        base = trials[ids.index("baseline")]
        assert base.params == {k: BASELINE_PARAMS[k] for k in OPTIMIZER} and base.value == 10.0
        assert all(t.value is None for t in trials if t.state == TrialState.FAIL)

        first = await agent.propose(context)
        again = await tpe(seed=7).propose(await context_now(bus, agent))
        other = await tpe(seed=8).propose(context)
        assert first == again
        assert first.params != other.params
        assert first.shown_ids == ids

        # The running agent, shown the same lineage, publishes exactly that proposal.
        async def steps():
            (row,) = await wait_for_trials(bus, "c1", "tpe-optimizer", 1)
            assert json.loads(row["params"]) == pytest.approx(first.params)
            assert row["diff"] == first.diff and row["hypothesis"] == first.hypothesis
            assert json.loads(row["shown_ids"]) == ids
            assert row["parent_id"] == "o1"  # the incumbent: the best kept trial

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(tpe(seed=7).run)
                await steps()
                await stop_campaign(bus, "c1")


async def test_a_growing_lineage_moves_only_surface_knobs_within_bounds(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1", max_trials=100)
        await score(bus, "c1", "baseline", 10.0)
        agent = tpe(seed=1, surface="architecture")
        incumbent_score = 10.0
        for i in range(14):  # past optuna's 10 random start-up trials, into TPE proper
            context = await context_now(bus, agent)
            proposal = await agent.propose(context)
            assert changed_paths(proposal.diff) == {"model.py"}
            tree = apply_diff(context.files, proposal.diff)
            assert knob_values(tree, TASK.spec.knobs) == proposal.params
            for name, value in proposal.params.items():
                knob = KNOBS[name]
                if knob.path == "model.py":
                    assert knob.low <= value <= knob.high and isinstance(value, int)
                else:
                    assert value == BASELINE_PARAMS[name]  # other surfaces' knobs never move
            assert "TPE over" in proposal.hypothesis and " -> " in proposal.hypothesis
            trial_id = f"t{i}"
            await propose(
                bus, "c1", trial_id, context.parent_id, proposal.diff, params=proposal.params, specialist="tpe"
            )
            value = math.log(proposal.params["HIDDEN"]) + proposal.params["DEPTH"]
            better = value < incumbent_score
            incumbent_score = min(value, incumbent_score)
            await score(bus, "c1", trial_id, value, "keep" if better else "discard")
        trials, _ = history(await context_now(bus, agent), surface_knobs(context), {})
        assert len(trials) == 15


async def test_the_running_agent_proposes_again_after_each_outcome(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        await score(bus, "c1", "baseline", 10.0)

        async def steps():
            for n in range(1, 4):
                rows = await wait_for_trials(bus, "c1", "tpe-optimizer", n)
                await score(bus, "c1", rows[-1]["trial_id"], 10.0 + n, "discard")
            rows = await wait_for_trials(bus, "c1", "tpe-optimizer", 4)
            assert len({r["diff"] for r in rows}) == 4

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(tpe().run)
                await steps()
                await stop_campaign(bus, "c1")
        assert len(await trials_of(bus, "c1", "tpe-optimizer")) == 4
