"""Artifacts and runs for the byte-level language-model tasks (golf-mini, core-mini).

Hand-written models whose scores are known in closed form, a short real run of a task's recipe in the
executor's sandbox, and scoring in the evaluator's sandbox: the same components a campaign uses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from agents.catalog import candidates, variants
from agents.edits import set_knob
from evaluators.sandbox import SandboxPool
from evaluators.spec import Task
from executors.sandbox import Limits, run_command

# The same next-byte logits at every position: a learnable vector, so it goes through int8 like weights.
CONSTANT_MODEL = """
import torch
from torch import nn

class Constant(nn.Module):
    context = CONTEXT

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(256))

    def forward(self, idx):
        return self.logits.expand(*idx.shape, 256)

def build_model():
    return Constant()
"""

# Bets that the next byte repeats the byte SHIFT places on: SHIFT = 0 is causal, SHIFT = 1 reads the answer.
ECHO_MODEL = """
import torch
from torch import nn
from torch.nn import functional as F

class Echo(nn.Module):
    context = CONTEXT

    def forward(self, idx):
        return 4.0 * F.one_hot(idx.roll(-SHIFT, dims=1), 256).float()

def build_model():
    return Echo()
"""
ECHO_BET = 4.0


def write_artifact(folder: Path, source: str, state: dict | None = None, **constants) -> Path:
    """An artifact folder with model.py (CONTEXT, SHIFT ... filled in) and model.pt."""
    import torch

    for name, value in constants.items():
        source = source.replace(name, repr(value))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(source)
    torch.save(state or {}, folder / "model.pt")
    return folder


def echo_logprobs(data: np.ndarray) -> np.ndarray:
    """What ECHO_MODEL with SHIFT = 0 gives each byte after the first, in closed form."""
    repeated = data[1:] == data[:-1]
    return np.where(repeated, ECHO_BET, 0.0) - np.log(np.exp(ECHO_BET) + 255)


def assert_transforms_apply(task: Task) -> None:
    """Every variant of every catalog transform applies to the starting recipe and changes it."""
    files = {p.name: p.read_text() for p in task.recipe_dir.iterdir() if p.is_file()}
    applied = candidates(files, task.spec.transforms, task.spec.knobs)
    assert len(applied) == sum(len(variants(t)) for t in task.spec.transforms) > 0


def run_recipe(task: Task, run_dir: Path, **knobs) -> Path:
    """The task's starting recipe with some knobs changed, run as an executor runs it; the artifact dir."""
    shutil.copytree(task.recipe_dir, run_dir)
    task.module().prepare(run_dir)
    for knob in task.spec.knobs:
        if knob.name in knobs:
            path = run_dir / knob.path
            path.write_text(set_knob(path.read_text(), knob.name, knobs[knob.name]))
    budgets = task.spec.budgets
    limits = Limits(wall_s=budgets.train_s, memory_mb=budgets.memory_mb, file_mb=budgets.file_mb)
    result = run_command(task.spec.command, run_dir, limits, log_path=run_dir.parent / "train.log")
    assert result.exit_code == 0, (run_dir.parent / "train.log").read_text()[-3000:]
    return run_dir / "artifact"


async def score_in_sandbox(task: Task, artifact_dir: Path, sandbox_root: Path) -> dict[str, float]:
    """predict() in the evaluator's sandbox, metrics() here, as the evaluator does."""
    inputs, targets = task.module().heldout()
    pool = SandboxPool(sandbox_root)
    try:
        result = await pool.run(task, artifact_dir, inputs)
    finally:
        await pool.close()
    assert result.outputs is not None, result.error
    return task.module().metrics(result.outputs, targets)
