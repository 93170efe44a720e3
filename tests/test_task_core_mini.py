"""core-mini: items come only from held-out text, CORE's centering is exact (a constant model scores 0),
a model must cover the longest prompt and be causal, and a short real run scores end to end."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest

from agents.edits import read_knob
from bytelm_artifacts import (
    CONSTANT_MODEL,
    ECHO_MODEL,
    assert_transforms_apply,
    run_recipe,
    score_in_sandbox,
    write_artifact,
)
from evaluators.pydoc_text import split
from evaluators.spec import load_task

TASK = load_task("core-mini")
CORE = TASK.module()
MC, SCHEMA, LM = (CORE.FAMILIES.index(f) for f in ("multiple_choice", "schema", "language_modeling"))


@pytest.fixture(autouse=True)
def own_imports(monkeypatch):
    """predict() imports each artifact's model.py; keep this process's import state as it was."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "model", None)


@pytest.fixture(scope="module")
def heldout():
    return CORE.heldout()


def gate(metric: str):
    return next(g for g in TASK.spec.gates if g.metric == metric)


def test_the_spec_names_its_score_gates_knobs_and_transforms():
    spec = TASK.spec
    assert (spec.name, spec.metric, spec.direction, spec.score) == ("core-mini", "core_metric", "max", "core_metric")
    assert gate("context_ok").passes(1.0) and not gate("context_ok").passes(0.0)
    assert gate("causal").passes(1.0) and not gate("causal").passes(0.0)
    assert spec.frozen == ["data/"]
    for knob in spec.knobs:
        assert knob.low <= read_knob((TASK.recipe_dir / knob.path).read_text(), knob.name) <= knob.high
    assert_transforms_apply(TASK)


def test_items_are_deterministic_balanced_and_well_formed(heldout):
    items = CORE.items()
    CORE.items.cache_clear()
    assert CORE.items() == items  # rebuilt from scratch, the same items
    counts = Counter(item.family for item in items)
    assert all(counts[family] >= 150 for family in CORE.FAMILIES), counts
    for item in items:
        if item.family == "multiple_choice":
            assert len(set(item.prompts)) == 1 and len(set(item.continuations)) == CORE.CHOICES
        elif item.family == "schema":
            assert len(set(item.prompts)) == 2 and len(set(item.continuations)) == 1
        else:
            assert len(item.prompts) == 1 and len(item.continuations[0]) == CORE.LM_LETTERS
    answers = Counter(item.answer for item in items if item.family == "multiple_choice")
    assert len(answers) == CORE.CHOICES and min(answers.values()) > counts["multiple_choice"] / 8  # shuffled
    inputs, targets = heldout
    assert len(inputs["offsets"]) == len(targets) + 1 == len(inputs["continuation_starts"]) + 1
    assert targets[:, 3].max() <= CORE.MAX_SEQUENCE


def test_item_text_is_held_out_text_absent_from_the_prepared_tree(tmp_path):
    """Every item's text lies in one held-out paragraph, and 64 bytes of that paragraph around it (the
    whole paragraph when shorter: a short item alone may be a phrase any text has) are not in training."""
    CORE.prepare(tmp_path)
    train = b"\n".join(p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file())
    paragraphs = [CORE.prose(p) for p in split().heldout]
    for item in CORE.items():
        query = (item.prompts[item.answer].split(CORE.SEPARATOR)[-1] + item.continuations[item.answer])
        source = next((text for text in paragraphs if query in text), None)
        assert source is not None, query  # built from held-out paragraphs only
        at = source.index(query)
        start = max(0, min(at - (64 - len(query)) // 2, len(source) - 64))
        around = source[start : max(start + 64, at + len(query))]
        assert not any(around[i : i + 64].encode() in train for i in range(0, max(1, len(around) - 63), 8)), query


def test_core_centering_and_averaging():
    assert CORE.centered(0.25, 0.25) == 0 and CORE.centered(1.0, 0.25) == 1 and CORE.centered(0.625, 0.5) == 0.25
    # Two items per family: (item, family, is the answer, length) per option.
    targets = np.array([
        (0, MC, 1, 10), (0, MC, 0, 10), (0, MC, 0, 10), (0, MC, 0, 10),
        (1, MC, 0, 12), (1, MC, 1, 12), (1, MC, 0, 12), (1, MC, 0, 12),
        (2, SCHEMA, 1, 20), (2, SCHEMA, 0, 20),
        (3, SCHEMA, 0, 30), (3, SCHEMA, 1, 30),
        (4, LM, 1, 40),
        (5, LM, 1, 41),
    ])
    outputs = {
        # MC: item 0 right, item 1 a three-way tie for best that includes the answer (1/3 credit).
        "mean_logprob": np.array([-1.0, -2, -2, -2, -1, -1, -1, -3, -0.5, -0.7, -0.9, -0.8, -1, -1]),
        "greedy": np.array([0] * 12 + [1, 0]),
        "context": np.array([40]),
        "causal_gap": np.array([0.0]),
    }
    metrics = CORE.metrics(outputs, targets)
    assert metrics["acc_multiple_choice"] == pytest.approx((1 + 1 / 3) / 2)
    assert metrics["acc_schema"] == 1.0 and metrics["acc_language_modeling"] == 0.5
    expected = np.mean([((1 + 1 / 3) / 2 - 0.25) / 0.75, 1.0, 0.5])
    assert metrics["core_metric"] == pytest.approx(expected)
    assert (metrics["needed_context"], metrics["context_ok"], metrics["causal"]) == (40, 1.0, 1.0)
    assert CORE.metrics({**outputs, "context": np.array([39])}, targets)["context_ok"] == 0.0
    with pytest.raises(ValueError, match="finite"):
        CORE.metrics({**outputs, "mean_logprob": np.full(14, np.nan)}, targets)


def test_a_constant_model_scores_exactly_zero(tmp_path, heldout):
    """Ties share credit, so guessing scores each family's random baseline and centers to 0."""
    import torch

    inputs, targets = heldout
    artifact = write_artifact(tmp_path / "artifact", CONSTANT_MODEL, {"logits": torch.zeros(256)}, CONTEXT=512)
    metrics = CORE.metrics(CORE.predict(artifact, inputs), targets)
    assert metrics["acc_multiple_choice"] == pytest.approx(0.25) and metrics["acc_schema"] == pytest.approx(0.5)
    assert metrics["acc_language_modeling"] == 0.0 and metrics["core_metric"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["context_ok"] == 1.0 and metrics["causal"] == 1.0


def test_a_context_shorter_than_the_longest_prompt_fails_the_gate(tmp_path, heldout):
    import torch

    inputs, targets = heldout
    needed = int(targets[:, 3].max()) - 1
    for context, ok in ((needed, 1.0), (needed - 1, 0.0), (32, 0.0)):
        zeros = {"logits": torch.zeros(256)}
        artifact = write_artifact(tmp_path / f"c{context}", CONSTANT_MODEL, zeros, CONTEXT=context)
        metrics = CORE.metrics(CORE.predict(artifact, inputs), targets)  # long prompts are cropped, not a crash
        assert (metrics["context_ok"], gate("context_ok").passes(metrics["context_ok"])) == (ok, bool(ok))
    # The starting recipe's context covers the prompts.
    assert read_knob((TASK.recipe_dir / "model.py").read_text(), "CONTEXT") >= needed


def test_a_model_that_reads_ahead_is_not_causal(tmp_path, heldout):
    inputs, targets = heldout
    artifact = write_artifact(tmp_path / "artifact", ECHO_MODEL, CONTEXT=512, SHIFT=1)
    metrics = CORE.metrics(CORE.predict(artifact, inputs), targets)
    assert metrics["causal"] == 0.0 and not gate("causal").passes(metrics["causal"])
    # What reading the answer would have been worth: most of the LM items (a causal model of this size
    # gets few of them).
    assert metrics["acc_language_modeling"] > 0.8


@pytest.mark.anyio
async def test_a_short_real_run_scores_in_the_sandbox(tmp_path):
    artifact = run_recipe(TASK, tmp_path / "run", ITERATIONS=3)
    metrics = await score_in_sandbox(TASK, artifact, tmp_path)
    assert -1.0 <= metrics["core_metric"] <= 1.0 and np.isfinite(list(metrics.values())).all()
    assert metrics["context_ok"] == 1.0 and metrics["causal"] == 1.0
    assert all(g.passes(metrics[g.metric]) for g in TASK.spec.gates)
