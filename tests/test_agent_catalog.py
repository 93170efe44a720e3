"""The catalog specialist: the task's declared techniques apply to its recipe once each, stay in their
surface, and the variant to try next comes from the lineage (so a restart loses nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from agent_helpers import (
    BASELINE_FILES,
    TASK,
    abandon,
    folded,
    propose,
    score,
    start_campaign,
    stop_campaign,
    wait_for_trials,
)

from agents.catalog import CatalogSpecialist, TransformError, apply_transform, candidates, evaluate, variants
from agents.edits import apply_diff, knob_values, read_knob
from agents.trees import Trees
from bus.connection import Bus
from evaluators.spec import Transform, TransformEdit, load_spec
from projections import views

pytestmark = pytest.mark.anyio
KNOBS = TASK.spec.knobs


def catalog(surface: str = "optimizer", seed: int = 0) -> CatalogSpecialist:
    return CatalogSpecialist(specialist=f"catalog-{surface}", surface=surface, seed=seed, poll_s=0.1)


async def context_now(bus: Bus, agent: CatalogSpecialist, c: str = "c1"):
    lineage = await folded(bus)
    return await agent.context(lineage, views.campaign(lineage, c), TASK, Trees(bus, lineage, c))


async def propose_and_publish(bus: Bus, agent: CatalogSpecialist, trial_id: str, c: str = "c1"):
    """What the agent would propose now, published under trial_id by hand (the test plays the loop)."""
    context = await context_now(bus, agent, c)
    proposal = await agent.propose(context)
    if proposal is not None:
        await bus.publish(agent._event(c, trial_id, proposal.parent_id or context.parent_id, proposal))
    return proposal


def key(hypothesis: str) -> str:
    return hypothesis.split(":")[0].removeprefix("technique ")


def test_every_declared_variant_applies_to_the_starting_recipe_once_and_in_its_surface():
    options = candidates(BASELINE_FILES, TASK.spec.transforms, KNOBS)
    declared = sum(len(variants(t)) for t in TASK.spec.transforms)
    assert len(options) == declared  # every variant applies to the starting recipe
    for option in options:
        changed = {p for p in BASELINE_FILES if option.files[p] != BASELINE_FILES[p]}
        assert changed == {option.transform.path}
        assert option.transform.path in TASK.spec.surface(option.transform.surface).paths
        compile(option.files[option.transform.path], option.transform.path, "exec")
        assert apply_diff(BASELINE_FILES, option.diff) == option.files
        if option.transform.edits:  # a code edit's search text is gone once it is applied
            assert candidates(option.files, [option.transform], KNOBS) == []
        for knob in KNOBS:  # declared knobs stay in their bounds
            if knob.path == option.transform.path:
                assert knob.low <= read_knob(option.files[knob.path], knob.name) <= knob.high


def transform(**fields) -> Transform:
    return Transform(name="t", surface="optimizer", path="train.py", description="d", **fields)


def test_transforms_refuse_what_does_not_apply_and_clip_knobs():
    with pytest.raises(TransformError, match="occurs .* times"):
        apply_transform(BASELINE_FILES, transform(edits=[TransformEdit(search="\n", replace="")]), {}, KNOBS)
    with pytest.raises(TransformError, match="occurs 0 times"):
        apply_transform(BASELINE_FILES, transform(edits=[TransformEdit(search="nope", replace="")]), {}, KNOBS)
    huge = transform(constants={"EPOCHS": "EPOCHS * 100"})
    assert read_knob(apply_transform(BASELINE_FILES, huge, {}, KNOBS)["train.py"], "EPOCHS") == 40  # knob high
    assert evaluate("max(2, EPOCHS // 4) + 0.5", {"EPOCHS": 30}.__getitem__) == 7.5
    for bad in ("__import__('os')", "EPOCHS.real", "[1][0]", "1 / 0", "EPOCHS if 1 else 2", "1 +"):
        with pytest.raises(TransformError):
            evaluate(bad, {"EPOCHS": 30}.__getitem__)


@pytest.mark.parametrize(
    "transform, error",
    [
        ('surface = "nope"\npath = "train.py"\nconstants = { LR = "1" }', "no surface 'nope'"),
        ('surface = "optimizer"\npath = "model.py"\nconstants = { LR = "1" }', "model.py is not in surface optimizer"),
        ('surface = "optimizer"\npath = "train.py"\nconstants = { LR = "{x}" }', r"placeholders \['x'\] are not"),
        ('surface = "optimizer"\npath = "train.py"\nconstants = { LR = "1" }\nparams = { y = [1] }', "nowhere"),
        ('surface = "optimizer"\npath = "train.py"', "needs edits or constants"),
    ],
)
def test_bad_transform_declarations_are_clear_errors(tmp_path: Path, transform: str, error: str):
    toml = (TASK.folder / "task.toml").read_text()
    toml = toml.split("[[transforms]]")[0] + f'[[transforms]]\nname = "x"\ndescription = "d"\n{transform}\n'
    (tmp_path / "task.toml").write_text(toml)
    with pytest.raises(ValueError, match=error):
        load_spec(tmp_path / "task.toml")


async def test_the_lineage_decides_the_next_variant_and_a_restart_carries_on(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1", max_trials=50)
        await score(bus, "c1", "baseline", 10.0)

        first = await propose_and_publish(bus, catalog(), "k1")
        assert key(first.hypothesis) == "large_batch(factor=4,power=1)"  # first declared, never tried
        assert knob_values(apply_diff(BASELINE_FILES, first.diff), KNOBS) == first.params
        assert (first.params["BATCH_SIZE"], first.params["LR"]) == (128, 0.04) and first.shown_ids == ["baseline"]
        await score(bus, "c1", "k1", None, "disqualified")

        # Tried and failed on the incumbent: a technique never tried comes first, whatever agent asks.
        second = await propose_and_publish(bus, catalog(), "k2")
        assert key(second.hypothesis) == "early_stop(loss=0.1)"
        await abandon(bus, "c1", "k2")  # lost to the harness: says nothing about the technique
        third = await (catalog()).propose(await context_now(bus, catalog()))
        assert third == second

        # A new incumbent: what failed elsewhere comes after every variant never tried.
        await propose(bus, "c1", "better", "baseline", "", specialist="tpe-optimizer")
        await score(bus, "c1", "better", 9.0, "keep")
        seen = []
        for i in range(24):
            proposal = await propose_and_publish(bus, catalog(), f"n{i}")
            if proposal is None:
                break
            seen.append(key(proposal.hypothesis))
            await score(bus, "c1", f"n{i}", 9.5, "discard")
        assert seen[0] == "early_stop(loss=0.1)" and seen[-1] == "large_batch(factor=4,power=1)"
        assert seen.index("large_batch(factor=4,power=0.5)") > seen.index("label_smoothing(smoothing=0.1)")
        assert len(set(seen)) == len(seen) == 20  # every optimizer variant once on this incumbent, then none
        assert all(not s.startswith(("normalize", "activation")) for s in seen)  # the optimizer surface only


async def test_the_running_agent_proposes_on_the_incumbent(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        await score(bus, "c1", "baseline", 10.0)

        async def steps():
            (row,) = await wait_for_trials(bus, "c1", "catalog-architecture", 1)
            assert row["policy"] == "catalog" and row["parent_id"] == "baseline"
            assert key(row["hypothesis"]) == "shallower()"
            tree = apply_diff(BASELINE_FILES, row["diff"])
            assert read_knob(tree["model.py"], "DEPTH") == 1 and tree["train.py"] == BASELINE_FILES["train.py"]
            assert json.loads(row["params"])["DEPTH"] == 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(catalog("architecture").run)
                await steps()
                await stop_campaign(bus, "c1")


async def test_without_lineage_it_sees_only_the_incumbent_and_draws(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1", arm="no-lineage", max_trials=50)
        await score(bus, "c1", "baseline", 10.0)
        drawn = []
        for i in range(8):
            proposal = await propose_and_publish(bus, catalog(seed=1), f"d{i}")
            assert proposal.shown_ids == ["baseline"]
            drawn.append(key(proposal.hypothesis))
            await score(bus, "c1", f"d{i}", None, "disqualified")
        # Blind to what was tried, so not the lineage arm's order, and free to repeat itself.
        assert drawn[:2] != ["large_batch(factor=4,power=1)", "early_stop(loss=0.1)"]
        assert len(set(drawn)) > 1
