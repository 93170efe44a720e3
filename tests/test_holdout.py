"""`arx audit --holdout`: each CPU task's holdout() split is disjoint from its validation split and its
training data, and on a short real campaign of each CPU task (real nats-server, evaluator, executor and
catalog agent) the audit measures every keep on it and reports validation beside held-out deltas."""

from __future__ import annotations

import json
import shutil
import statistics

import numpy as np
import pytest

from agents.edits import set_knob
from cluster import Cluster
from evaluators.holdout import spearman, unusable
from evaluators.pydoc_text import split
from evaluators.spec import load_task
from projections.audit import render_text

WINDOW = 64  # the leak check's promise: no run of this many bytes on both sides


def windows(data: bytes) -> set[bytes]:
    return {data[i : i + WINDOW] for i in range(len(data) - WINDOW + 1)}


def collapsed(paragraphs) -> list[bytes]:
    """The paragraphs with their white space collapsed: the same passage, indented or wrapped otherwise."""
    return [" ".join(p.split()).encode() for p in paragraphs]


def test_digits_holdout_images_are_neither_validation_nor_training_images(tmp_path):
    task = load_task("digits-speedrun").module()
    task.prepare(tmp_path)  # the training data, as a trial's tree gets it
    images = {"heldout": task.heldout()[0]["images"], "holdout": task.holdout()[0]["images"],
              "train": np.load(tmp_path / "data" / "train.npz")["images"]}
    rows = {name: {image.tobytes() for image in part} for name, part in images.items()}
    assert len(rows["holdout"]) == len(rows["heldout"]) == 270  # the data set holds no image twice
    assert not rows["holdout"] & rows["heldout"] and not rows["holdout"] & rows["train"]
    # Stratified: each digit about as often in either split.
    assert np.abs(np.bincount(task.holdout()[1]) - np.bincount(task.heldout()[1])).max() <= 1


def test_the_byte_tasks_holdout_text_shares_no_run_with_validation_or_training_text():
    text = split()
    holdout = text.holdout_bytes()
    assert len(holdout) > 30_000 and not set(text.holdout) & {*text.heldout, *text.train}
    seen = windows(b" ".join(collapsed(text.heldout + text.train)))
    assert not set().union(*map(windows, collapsed(text.holdout))) & seen
    golf = load_task("golf-mini").module()
    assert bytes(golf.holdout()[0]["bytes"]) == holdout[: golf.EVAL_BYTES]
    # golf-mini still scores trials on a whole window of validation text.
    assert bytes(golf.heldout()[0]["bytes"]) == text.heldout_bytes()[: golf.EVAL_BYTES]
    assert len(text.heldout_bytes()) >= golf.EVAL_BYTES


def test_core_mini_holdout_items_come_from_holdout_text_only():
    """Every holdout item's text lies in a holdout paragraph, and 64 bytes of that paragraph around it (the
    whole paragraph when shorter: a short item alone may be a phrase any text has) are in no validation or
    training paragraph; every few-shot example is a sentence of a holdout paragraph."""
    core = load_task("core-mini").module()
    hold = [core.prose(p) for p in split().holdout]
    seen = b" ".join(collapsed(split().heldout + split().train))
    items = core.items(split().holdout)
    assert len(items) == 3 * core.ITEMS_PER_FAMILY
    for item in items:
        *shots, question = item.prompts[item.answer].split(core.SEPARATOR)
        assert all(any(shot in p for p in hold) for shot in shots), shots
        query = question + item.continuations[item.answer]
        source = next((p for p in hold if query in p), None)
        assert source is not None, query
        at = source.index(query)
        start = max(0, min(at - (WINDOW - len(query)) // 2, len(source) - WINDOW))
        around = " ".join(source[start : max(start + WINDOW, at + len(query))].split()).encode()
        assert not any(around[i : i + WINDOW] in seen for i in range(0, max(1, len(around) - WINDOW + 1), 8)), query


def test_spearman_ranks_ties_and_refuses_what_cannot_be_ranked():
    assert spearman([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]) == 1.0
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == -1.0
    assert spearman([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8)
    assert spearman([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(0.866025404)  # a tie shares its ranks
    assert spearman([1.0, 2.0], [2.0, 1.0]) is None and spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) is None


def test_a_task_without_a_holdout_split_is_skipped_with_the_reason(arx_env):
    assert unusable(load_task("golf-mini")) is None
    assert "declares no holdout()" in unusable(load_task("tiny"))
    assert "scored from its runs' logs" in unusable(load_task("parameter-golf"))


def short_task(tmp_path, name: str, **knobs) -> str:
    """The task's folder copied with some recipe knobs changed (a short run), found first by every role."""
    task = load_task(name)
    folder = shutil.copytree(task.folder, tmp_path / "tasks" / task.folder.name)
    for knob in task.spec.knobs:
        if knob.name in knobs:
            path = folder / "recipe" / knob.path
            path.write_text(set_knob(path.read_text(), knob.name, knobs[knob.name]))
    return str(folder.parent)


def audited(env: dict, tmp_path, task: str, trials: int, *audit_args: str) -> tuple[dict, dict]:
    """A campaign of the task run to its stop by a real evaluator, executor and catalog agent, then `arx
    audit --holdout --json --html` on it; its section of the audit, and that section's held-out part."""
    cluster = Cluster(env, tmp_path / "logs")
    try:
        cluster.start("evaluator", "evaluator", "--name", "evaluator-1")
        cluster.start("executor", "executor", "--name", "executor-1")
        cluster.command("campaign", "start", "--task", task, "--trials", str(trials), "--campaign", "held")
        cluster.start("agent", "agent", "--policy", "catalog", "--specialist", "catalog-optimizer",
                      "--surface", "optimizer", "--campaign", "held")
        cluster.wait_stopped("held", timeout=300)
    finally:
        cluster.stop_all()
    out = tmp_path / "report"
    report = json.loads(cluster.command("audit", "--holdout", "--campaign", "held", "--json", "--html", str(out),
                                        *audit_args, timeout=300))
    text = render_text(report)
    a = report["campaigns"]["held"]
    h = a["holdout"]
    assert "held-out check (" in text and f"held-out data: {h['improving']} of {h['keeps']} keep" in text
    assert 'alt="keeps on held-out data"' in (out / "index.html").read_text()
    return a, h


def check_keeps(a: dict, h: dict) -> dict[str, dict]:
    """What holds for any campaign: every keep measured, each delta against the incumbent it beat."""
    steps = {s["trial"]: s for s in h["steps"]}
    assert list(steps)[0] == a["baseline_trial"] and h["steps"][0]["incumbent"] is None
    assert h["keeps"] == a["labels_with_baseline"]["keep"] - 1 == len(steps) - 1
    assert (h["chain"]["from"], h["chain"]["to"]) == (a["baseline_trial"], a["best_trial"])
    better = (lambda d: d < 0) if a["direction"] == "min" else (lambda d: d > 0)
    for step in h["steps"][1:]:
        incumbent = steps[step["incumbent"]]
        assert step["validation_delta"] == pytest.approx(step["validation"] - incumbent["validation"])
        if step["holdout"] is None or incumbent["holdout"] is None:  # every held-out run of one failed
            assert (step["holdout_delta"], step["improves"]) == (None, False)
            continue
        assert step["holdout_delta"] == pytest.approx(step["holdout"] - incumbent["holdout"])
        assert step["improves"] == better(step["holdout_delta"])
    assert h["improving"] == sum(s["improves"] is True for s in h["steps"])
    measured = [s for s in h["steps"] if s["holdout"] is not None]
    assert h["ranked"] == len(measured)
    assert h["spearman"] == spearman([s["validation"] for s in measured], [s["holdout"] for s in measured])
    return steps


@pytest.mark.parametrize("name", ["golf-mini", "core-mini"])
def test_holdout_rescores_every_keep_of_a_short_campaign(name, arx_env, tmp_path):
    # The baseline trains 3 steps; the catalog's first technique (more_steps) raises them to the knob's
    # floor of 50 (as many as 5 s of training allow): a keep, in a campaign of about a minute.
    tasks = short_task(tmp_path, name, ITERATIONS=3, TRAIN_SECONDS=5)
    a, h = audited(arx_env | {"ARX_TASKS_PATH": f"{tasks}:{arx_env['ARX_TASKS_PATH']}"}, tmp_path, name, 2)
    assert (h["method"], h["rounds"], h["keeps"]) == ("rescored", 1, 1)
    steps = check_keeps(a, h)
    assert h["run_order"] == list(steps)
    trained = h["steps"][1]
    assert trained["holdout_runs"] == [trained["holdout"]] and not trained["holdout_failed"]
    # The same stored artifact scores otherwise on the other split: the score is holdout()'s.
    assert trained["holdout"] != trained["validation"]
    assert all(s["holdout"] is not None and np.isfinite(s["holdout"]) for s in h["steps"]), h


def test_holdout_remeasures_the_keeps_of_a_timing_task_interleaved(arx_env, tmp_path):
    a, h = audited(arx_env, tmp_path, "digits-speedrun", 3, "--rounds", "2")
    assert (h["method"], h["rounds"]) == ("remeasured", 2)
    steps = check_keeps(a, h)
    keeps = list(steps)
    assert h["run_order"] == keeps + keeps[::-1]  # the second round runs backwards
    for step in h["steps"]:
        assert len(step["holdout_runs"]) + len(step["holdout_failed"]) == 2
        if step["holdout_runs"]:
            assert step["holdout"] == statistics.median(step["holdout_runs"]) and 0 < step["holdout"] < 60
