"""Control arms: which agents each arm runs, and what TPE sees without the lineage."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_helpers import BASELINE_FILES, BASELINE_PARAMS, TASK, folded, propose, score, start_campaign

from agents.arms import roster
from agents.edits import set_knob, unified_diff
from agents.tpe import TPESpecialist
from agents.trees import Trees
from bus.connection import Bus
from evaluators.spec import load_spec
from projections import views

pytestmark = pytest.mark.anyio
TINY = Path(__file__).resolve().parent / "tasks" / "tiny" / "task.toml"


def test_rosters_per_arm():
    lineage = [(m.policy, m.specialist, m.surface) for m in roster(TASK.spec, "lineage")]
    assert lineage == [
        ("tpe", "tpe-optimizer", "optimizer"),
        ("catalog", "catalog-optimizer", "optimizer"),
        ("tpe", "tpe-architecture", "architecture"),
        ("catalog", "catalog-architecture", "architecture"),
        ("combiner", "combiner", "*"),
        ("repair", "repair", "*"),
    ]
    assert roster(TASK.spec, "no-lineage") == roster(TASK.spec, "lineage")  # the same agents, shown less
    generalist = [(m.policy, m.surface) for m in roster(TASK.spec, "generalist")]
    assert generalist == [("tpe", "*"), ("catalog", "*"), ("combiner", "*"), ("repair", "*")]
    generic = roster(TASK.spec, "generic")
    assert len(generic) == len(lineage) and {m.surface for m in generic} == {"*"}
    assert [m.specialist for m in generic[:2]] == ["agent-1", "agent-2"]
    # The tiny task has knobs on one surface, no techniques, and a surface with nothing to tune.
    tiny = [(m.policy, m.surface) for m in roster(load_spec(TINY), "lineage")]
    assert tiny == [("tpe", "main"), ("combiner", "*"), ("repair", "*")]
    with pytest.raises(ValueError, match="arm 'nope'"):
        roster(TASK.spec, "nope")


async def test_tpe_without_lineage_knows_only_the_incumbent(arx_env):
    async with await Bus.connect(role="admin") as bus:
        for c, arm in (("seen", "lineage"), ("blind", "no-lineage")):
            await start_campaign(bus, c, arm=arm, max_trials=50)
            await score(bus, c, "baseline", 10.0, "keep")
            for i in range(12):
                text = set_knob(BASELINE_FILES["train.py"], "EPOCHS", 2 + i)
                params = dict(BASELINE_PARAMS, EPOCHS=2 + i)
                diff = unified_diff("train.py", BASELINE_FILES["train.py"], text)
                await propose(bus, c, f"t{i}", "baseline", diff, params=params)
                await score(bus, c, f"t{i}", 20.0 - i, "discard")
        lineage = await folded(bus)
        proposals = {}
        for c in ("seen", "blind"):
            agent = TPESpecialist(specialist="tpe-optimizer", surface="optimizer", seed=3)
            context = await agent.context(lineage, views.campaign(lineage, c), TASK, Trees(bus, lineage, c))
            proposals[c] = [await agent.propose(context)]
            await propose(bus, c, "mine", "baseline", proposals[c][0].diff, specialist="tpe-optimizer")
            lineage = await folded(bus)
            context = await agent.context(lineage, views.campaign(lineage, c), TASK, Trees(bus, lineage, c))
            proposals[c].append(await agent.propose(context))
        assert len(proposals["seen"][0].shown_ids) == 13  # the baseline and every trial with knob values
        assert proposals["blind"][0].shown_ids == ["baseline"]
        assert "TPE over 1 trials" in proposals["blind"][0].hypothesis
        # Blind, it still moves on: each proposal of its own draws a new point.
        assert proposals["blind"][0].params != proposals["blind"][1].params
