"""The combiner: a real three-way merge of two kept trials of different specialists; a conflict is an
invalid_edit outcome, and no pair is merged twice."""

from __future__ import annotations

import json

import anyio
import pytest
from agent_helpers import (
    executor_beside,
    BASELINE_FILES,
    TASK,
    folded,
    propose,
    score,
    start_campaign,
    stays_at,
    stop_campaign,
    trials_of,
    wait_for_trials,
)

from agents.combiner import CombinerSpecialist, merge_trees
from agents.edits import apply_diff, read_knob, set_knob, tree_diff, unified_diff
from agents.trees import Trees
from bus.connection import Bus
from projections import views

pytestmark = pytest.mark.anyio
TRAIN, MODEL = BASELINE_FILES["train.py"], BASELINE_FILES["model.py"]


def combiner(**kwargs) -> CombinerSpecialist:
    return CombinerSpecialist(specialist="combiner", surface="*", poll_s=0.1, **kwargs)


async def context_now(bus: Bus, c: str = "c1"):
    lineage = await folded(bus)
    return await combiner().context(lineage, views.campaign(lineage, c), TASK, Trees(bus, lineage, c))


def test_merge_trees_merges_apart_edits_and_names_conflicting_files():
    base = {"a.py": "one\ntwo\nthree\nfour\nfive\n", "b.py": "b\n", "gone.py": "x\n"}
    ours = {**base, "a.py": "ONE\ntwo\nthree\nfour\nfive\n", "new.py": "added\n"}
    del ours["gone.py"]
    theirs = {**base, "a.py": "one\ntwo\nthree\nfour\nFIVE\n", "b.py": "B\n"}
    merged = merge_trees(base, ours, theirs)
    assert merged.conflicts == []
    assert merged.files == {"a.py": "ONE\ntwo\nthree\nfour\nFIVE\n", "b.py": "B\n", "new.py": "added\n"}
    # The diff against one side is what git applies to it, files added and deleted included.
    assert apply_diff(theirs, tree_diff(theirs, merged.files)) == merged.files

    clash = merge_trees(base, {**base, "a.py": "uno\n"}, {**base, "a.py": "eins\n", "b.py": "B\n"})
    assert clash.conflicts == ["a.py"]
    assert "<<<<<<< ours" in clash.files["a.py"] and ">>>>>>> theirs" in clash.files["a.py"]
    assert clash.files["b.py"] == "B\n"
    changed_deleted = merge_trees(base, {**base, "b.py": "B\n"}, {k: v for k, v in base.items() if k != "b.py"})
    assert changed_deleted.conflicts == ["b.py"]
    binary = merge_trees({"w": "\0a\n"}, {"w": "\0b\n"}, {"w": "\0c\n"})
    assert binary.conflicts == ["w"]


async def two_kept_branches(bus: Bus, *, model_edit: bool = True) -> tuple[str, str]:
    """baseline <- t-lr (tpe-optimizer, kept) and baseline <- c-arch (catalog-architecture, kept, best)."""
    await start_campaign(bus, "c1")
    await score(bus, "c1", "baseline", 10.0)
    lr = set_knob(TRAIN, "LR", 0.05)
    await propose(bus, "c1", "t-lr", "baseline", unified_diff("train.py", TRAIN, lr), specialist="tpe-optimizer")
    await score(bus, "c1", "t-lr", 9.0, "keep")
    if model_edit:
        path, old, new = "model.py", MODEL, set_knob(MODEL, "HIDDEN", 128)
    else:  # the same line as t-lr's: a conflict
        path, old, new = "train.py", TRAIN, set_knob(TRAIN, "LR", 0.002)
    await propose(bus, "c1", "c-arch", "baseline", unified_diff(path, old, new), specialist="catalog-architecture")
    await score(bus, "c1", "c-arch", 8.0, "keep")
    return "c-arch", "t-lr"


async def test_merges_the_best_pair_into_the_better_trial_once(arx_env):
    async with await Bus.connect(role="admin") as bus:
        ours, theirs = await two_kept_branches(bus)
        proposal = await combiner().propose(await context_now(bus))
        assert proposal.parent_id == ours and proposal.rejection is None
        assert proposal.shown_ids == [ours, theirs, "baseline"]
        merged = apply_diff({**BASELINE_FILES, "model.py": set_knob(MODEL, "HIDDEN", 128)}, proposal.diff)
        assert read_knob(merged["train.py"], "LR") == 0.05 and read_knob(merged["model.py"], "HIDDEN") == 128
        assert proposal.params["LR"] == 0.05 and proposal.params["HIDDEN"] == 128

        agent = combiner()

        async def steps():
            (row,) = await wait_for_trials(bus, "c1", "combiner", 1)
            assert row["diff"] == proposal.diff and row["policy"] == "combiner"
            await score(bus, "c1", row["trial_id"], 9.5, "discard")
            assert await stays_at(bus, agent, "c1", 1)  # the pair was tried: never again

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.run)
                await steps()
                await stop_campaign(bus, "c1")


async def test_a_conflict_is_an_invalid_edit_outcome_not_a_crash(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await two_kept_branches(bus, model_edit=False)

        agent = combiner()

        async def steps():
            with anyio.fail_after(15):
                while not (rows := await trials_of(bus, "c1", "combiner")) or rows[0]["label"] is None:
                    await anyio.sleep(0.05)
            (row,) = rows
            assert row["label"] == "invalid_edit" and row["outcome"] == "TrialRejected"
            assert row["evidence_message"] == "merge conflict in train.py"
            assert "<<<<<<< ours" in row["diff"]
            assert json.loads(row["shown_ids"])[:2] == ["c-arch", "t-lr"]
            assert await stays_at(bus, agent, "c1", 1)

        with anyio.fail_after(30):
            async with executor_beside(bus), anyio.create_task_group() as tg:
                tg.start_soon(agent.run)
                await steps()
                await stop_campaign(bus, "c1")


async def test_never_merges_a_trial_with_its_ancestor_or_one_specialist_with_itself(arx_env):
    """The two forbidden pairs hold the best scores, so the combiner meets both before the allowed one."""
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        await score(bus, "c1", "baseline", 10.0)
        lr = set_knob(TRAIN, "LR", 0.05)
        await propose(bus, "c1", "a", "baseline", unified_diff("train.py", TRAIN, lr), specialist="tpe-optimizer")
        await score(bus, "c1", "a", 7.0, "keep")
        hidden = set_knob(MODEL, "HIDDEN", 64)
        await propose(bus, "c1", "same", "baseline", unified_diff("model.py", MODEL, hidden), specialist="tpe-optimizer")
        await score(bus, "c1", "same", 7.5, "keep")  # the best pair with a, but the same specialist
        epochs = set_knob(lr, "EPOCHS", 20)
        await propose(bus, "c1", "child", "a", unified_diff("train.py", lr, epochs), specialist="catalog-optimizer")
        await score(bus, "c1", "child", 8.0, "keep")  # next best with a, but a descendant of a
        proposal = await combiner().propose(await context_now(bus))
        assert proposal.shown_ids[:2] == ["same", "child"]  # the only pair left
        assert proposal.parent_id == "same" and "+EPOCHS = 20" in proposal.diff and "LR = 0.05" in proposal.diff


async def test_without_lineage_there_is_nothing_to_merge(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c2", arm="no-lineage")
        await score(bus, "c2", "baseline", 10.0)
        lr = set_knob(TRAIN, "LR", 0.05)
        await propose(bus, "c2", "a", "baseline", unified_diff("train.py", TRAIN, lr), specialist="tpe-optimizer")
        await score(bus, "c2", "a", 9.0, "keep")
        hidden = set_knob(MODEL, "HIDDEN", 64)
        await propose(bus, "c2", "b", "baseline", unified_diff("model.py", MODEL, hidden), specialist="tpe-arch")
        await score(bus, "c2", "b", 8.5, "keep")
        assert await combiner().propose(await context_now(bus, "c2")) is None
