"""golf-mini: the split keeps held-out text out of the tree, the int8+zlib round trip and bits per byte
are exact on models with known answers, the size gate binds, and a short real run scores end to end."""

from __future__ import annotations

import math
import sys
import zlib

import numpy as np
import pytest
import torch

from agents.edits import read_knob, set_knob
from bytelm_artifacts import (
    CONSTANT_MODEL,
    ECHO_MODEL,
    assert_transforms_apply,
    echo_logprobs,
    run_recipe,
    score_in_sandbox,
    write_artifact,
)
from evaluators.pydoc_text import split
from evaluators.spec import load_task

TASK = load_task("golf-mini")
GOLF = TASK.module()
WINDOW = 64


@pytest.fixture(autouse=True)
def own_imports(monkeypatch):
    """predict() imports each artifact's model.py; keep this process's import state as it was."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "model", None)


def gate(metric: str):
    return next(g for g in TASK.spec.gates if g.metric == metric)


def test_the_spec_names_its_score_gates_knobs_and_transforms():
    spec = TASK.spec
    assert (spec.name, spec.metric, spec.direction, spec.score) == ("golf-mini", "val_bpb", "min", "val_bpb")
    assert (gate("total_bytes").op, gate("total_bytes").label) == ("<=", "size_blocked")
    assert gate("causal").passes(1.0) and not gate("causal").passes(0.0)
    assert spec.frozen == ["data/"] and spec.budgets.eval_s < spec.budgets.train_s
    for knob in spec.knobs:  # every knob is a line of the recipe, inside its range
        assert knob.low <= read_knob((TASK.recipe_dir / knob.path).read_text(), knob.name) <= knob.high
    assert_transforms_apply(TASK)


def windows(data: bytes) -> set[bytes]:
    return {data[i : i + WINDOW] for i in range(len(data) - WINDOW + 1)}


def test_no_held_out_passage_is_in_the_prepared_tree(tmp_path):
    GOLF.prepare(tmp_path)
    tree = b"\n".join(p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file())
    seen = windows(tree)
    heldout = split().heldout
    assert sum(len(p) for p in heldout) > 30_000
    leaked = [p[:80] for p in heldout if windows(p.encode()) & seen]
    assert leaked == []
    # The evaluation bytes are held-out paragraphs, and the training bytes are all there is in data/.
    inputs, targets = GOLF.heldout()
    assert bytes(inputs["bytes"]) == split().heldout_bytes()[: GOLF.EVAL_BYTES] and (targets == inputs["bytes"]).all()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["train.bin"]


def test_int8_zlib_round_trip_is_within_half_a_step_per_row():
    torch.manual_seed(0)
    state = {
        "matrix": torch.randn(5, 7) * torch.arange(1, 6)[:, None],  # rows of different scales
        "vector": torch.randn(9),
        "scalar": torch.tensor(-3.5),
        "half": torch.randn(3, 4).half(),
        "zeros": torch.zeros(2, 3),
        "empty": torch.zeros(0, 4),
        "steps": torch.arange(6),
    }
    blob = GOLF.pack_int8(state)
    assert blob == GOLF.pack_int8(state) and zlib.decompress(blob)  # deterministic, and plain zlib
    restored = GOLF.unpack_int8(blob)
    assert sorted(restored) == sorted(state)
    for name, tensor in state.items():
        back = restored[name]
        assert (back.dtype, back.shape) == (tensor.dtype, tensor.shape)
        if not tensor.is_floating_point() or tensor.numel() == 0:
            assert torch.equal(back, tensor)
            continue
        rows = tensor.float().reshape(tensor.shape[0] if tensor.ndim >= 2 else 1, -1)
        step = rows.abs().amax(dim=1, keepdim=True) / 127
        error = (back.float().reshape(rows.shape) - rows).abs()
        assert (error <= step / 2 + 1e-3 * step + 1e-7).all(), name
    assert torch.equal(restored["zeros"], state["zeros"])
    # int8 of a large zero tensor is mostly zlib's to shrink.
    assert len(GOLF.pack_int8({"w": torch.zeros(1000, 100)})) < 1000


def test_a_uniform_model_scores_exactly_eight_bits_per_byte(tmp_path):
    artifact = write_artifact(tmp_path / "artifact", CONSTANT_MODEL, {"logits": torch.zeros(256)}, CONTEXT=64)
    inputs, targets = GOLF.heldout()
    metrics = GOLF.metrics(GOLF.predict(artifact, inputs), targets)
    assert metrics["val_bpb"] == pytest.approx(8.0, abs=1e-6)  # float32 log-softmax
    assert metrics["causal"] == 1.0 and metrics["context"] == 64


def test_bits_per_byte_of_a_fixed_distribution_use_the_round_tripped_weights(tmp_path):
    logits = torch.randn(256, generator=torch.Generator().manual_seed(1)) * 3
    artifact = write_artifact(tmp_path / "artifact", CONSTANT_MODEL, {"logits": logits}, CONTEXT=32)
    inputs, targets = GOLF.heldout()
    metrics = GOLF.metrics(GOLF.predict(artifact, inputs), targets)

    served = GOLF.unpack_int8(GOLF.pack_int8({"logits": logits}))["logits"]
    logp = torch.log_softmax(served.double(), dim=0).numpy()
    expected = -logp[inputs["bytes"][1:]].mean() / math.log(2)
    assert metrics["val_bpb"] == pytest.approx(expected, rel=1e-6)
    unrounded = -torch.log_softmax(logits.double(), dim=0).numpy()[inputs["bytes"][1:]].mean() / math.log(2)
    assert metrics["val_bpb"] != unrounded  # the score is that of the int8 weights, not the saved floats
    assert metrics["model_bytes"] == len(GOLF.pack_int8({"logits": logits}))


@pytest.mark.parametrize("predicted, context", [(1, 8), (8, 8), (9, 8), (100, 16), (101, 16), (1000, 7), (50, 1)])
def test_windows_score_every_byte_once_with_half_a_context_behind_it(predicted, context):
    starts = GOLF.window_starts(predicted, min(context, predicted))
    length = min(context, predicted)
    covered = np.zeros(predicted + 1, dtype=int)
    scored_to = 0
    for start in starts:
        first = max(start, scored_to)
        assert first - start >= min(length // 2, start) or start == 0  # history behind each scored byte
        covered[first + 1 : start + length + 1] += 1
        scored_to = start + length
    assert covered[0] == 0 and (covered[1:] == 1).all()


def test_scores_line_up_with_the_bytes_they_predict(tmp_path):
    data = np.frombuffer(b"aab" * 20 + bytes(range(40)) + b"zzzz" * 10, dtype=np.uint8).copy()
    artifact = write_artifact(tmp_path / "artifact", ECHO_MODEL, CONTEXT=16, SHIFT=0)
    metrics_inputs = {"bytes": data}
    outputs = GOLF.predict(artifact, metrics_inputs)
    np.testing.assert_allclose(outputs["logprobs"], echo_logprobs(data), atol=1e-5)


def test_a_model_that_reads_the_next_byte_is_not_causal(tmp_path):
    artifact = write_artifact(tmp_path / "artifact", ECHO_MODEL, CONTEXT=16, SHIFT=1)
    inputs, targets = GOLF.heldout()
    metrics = GOLF.metrics(GOLF.predict(artifact, inputs), targets)
    assert metrics["causal"] == 0.0 and not gate("causal").passes(metrics["causal"])
    assert metrics["val_bpb"] < 4.0  # what the peek would have been worth: far below a uniform 8


def test_outputs_that_are_not_a_distribution_are_refused():
    inputs, targets = GOLF.heldout()
    outputs = {"logprobs": np.full(len(targets) - 1, -1.0), "code_bytes": [10], "model_bytes": [20],
               "context": [8], "causal_gap": [0.0]}
    assert GOLF.metrics(outputs, targets)["total_bytes"] == 30
    with pytest.raises(ValueError, match="shape"):
        GOLF.metrics({**outputs, "logprobs": np.zeros(5)}, targets)
    with pytest.raises(ValueError, match="at most 0"):
        GOLF.metrics({**outputs, "logprobs": np.full(len(targets) - 1, 0.5)}, targets)
    with pytest.raises(ValueError, match="finite"):
        GOLF.metrics({**outputs, "logprobs": np.full(len(targets) - 1, np.nan)}, targets)


def test_every_artifact_file_but_the_weights_counts_as_code(tmp_path):
    artifact = write_artifact(tmp_path / "artifact", CONSTANT_MODEL, {"logits": torch.zeros(256)}, CONTEXT=8)
    (artifact / "table.npy").write_bytes(b"\0" * 5000)  # data smuggled beside the code is counted raw
    (artifact / "lib").mkdir()
    (artifact / "lib" / "helper.py").write_text("X = 1\n")
    size = GOLF.artifact_size(artifact)
    assert size["code_bytes"] == len((artifact / "model.py").read_bytes()) + 5000 + 6
    assert size["model_bytes"] == len(GOLF.pack_int8({"logits": torch.zeros(256)}))


def recipe_size(**knobs) -> int:
    """Code plus compressed weights of the starting recipe's model, freshly initialized."""
    source = (TASK.recipe_dir / "model.py").read_text()
    for name, value in knobs.items():
        source = set_knob(source, name, value)
    namespace: dict = {}
    exec(source, namespace)
    torch.manual_seed(0)
    return len(source.encode()) + len(GOLF.pack_int8(namespace["build_model"]().state_dict()))


def test_the_size_cap_binds_on_the_starting_recipe():
    cap = gate("total_bytes")
    baseline = recipe_size()
    assert cap.passes(baseline) and baseline > 0.9 * cap.limit  # the starting point sits near the cap
    head_dim = read_knob((TASK.recipe_dir / "model.py").read_text(), "HEAD_DIM")
    assert not cap.passes(recipe_size(HEAD_DIM=head_dim + 1))  # one step wider is size_blocked
    assert not cap.passes(recipe_size(LAYERS=3))
    assert cap.passes(recipe_size(LAYERS=1, HEAD_DIM=34))  # the catalog's one_wide_layer(widen=1.4) fits
    assert cap.passes(cap.limit) and not cap.passes(cap.limit + 1)


@pytest.mark.anyio
async def test_a_short_real_run_scores_in_the_sandbox(tmp_path):
    artifact = run_recipe(TASK, tmp_path / "run", ITERATIONS=3)
    assert sorted(p.name for p in artifact.iterdir()) == ["model.pt", "model.py"]
    metrics = await score_in_sandbox(TASK, artifact, tmp_path)
    assert 3.0 < metrics["val_bpb"] < 9.0
    assert metrics["causal"] == 1.0 and metrics["context"] == 64
    assert all(g.passes(metrics[g.metric]) for g in TASK.spec.gates)
