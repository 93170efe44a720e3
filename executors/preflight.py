"""Preflight: cheap checks of an edited recipe before its full run, so that a broken or oversized trial
fails in seconds (preflight_crash, size_blocked) instead of after its whole training budget.

1. syntax: every .py file the diff changes must compile (compiled only, nothing runs);
2. smoke: where the task declares [preflight], its command (default: the task's own) runs in a copy of
   the run dir with ARX_SMOKE=1, which the recipe reads to train for a step or two;
3. size: where the task has a size_blocked gate and its task.py an artifact_size(artifact_dir), the
   smoke run's artifact gives the projected size; the model's shape, not its training, sets it.

A smoke run that outlives its budget proves nothing (the edit may have dropped the ARX_SMOKE switch), so
the full run goes ahead. The verdict stays the evaluator's: the executor reports what failed in a
TrialFinished with stage "preflight" and the evaluator labels it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bus.edits import diff_paths
from evaluators.spec import Gate, Task, TaskSpec
from executors.sandbox import Limits, RunResult

log = logging.getLogger("arx.preflight")

SMOKE_ENV = {"ARX_SMOKE": "1"}
SYNTAX_BUDGET_S = 30.0
COMPILE = "import sys\nfor path in sys.argv[1:]:\n    compile(open(path, 'rb').read(), path, 'exec')\n"
SIZE_LABEL = "size_blocked"
# A smoke run's barely trained weights compress a little worse than trained ones (0.5% on golf-mini):
# a projection blocks only when it is over the cap by more than this, the evaluator's gate does the rest.
SIZE_SLACK = 0.02

# run(run_dir, limits, log_path, command=..., env=...): a command run the way the executor runs the recipe.
Runner = Callable[..., RunResult]


@dataclass(frozen=True)
class Failure:
    check: str  # "syntax", "smoke" or "size"
    result: RunResult  # the run that failed; for "size", the smoke run whose artifact is too big
    limits: Limits
    measured: dict[str, float] = field(default_factory=dict)


def changed_python_files(diff: str, run_dir: Path) -> list[str]:
    """The .py files the diff leaves in the tree (a deleted file has nothing to compile)."""
    paths, _ = diff_paths(diff)
    return [p for p in dict.fromkeys(paths) if p.endswith(".py") and (run_dir / p).is_file()]


def size_gates(spec: TaskSpec) -> list[Gate]:
    return [gate for gate in spec.gates if gate.label == SIZE_LABEL]


def projected_size(task: Task, artifact_dir: Path) -> dict[str, float]:
    """The byte counts the size cap counts, and their sum as total_bytes; empty when the task has no
    size cap or no artifact_size(), or when the smoke artifact cannot be measured."""
    measure = getattr(task.module(), "artifact_size", None)
    if measure is None or not size_gates(task.spec):
        return {}
    try:
        sizes = {name: float(value) for name, value in measure(artifact_dir).items()}
    except Exception as exc:  # an artifact the task cannot read: the evaluator will say why, after the full run
        log.info("no size projection from %s: %s: %s", artifact_dir, type(exc).__name__, exc)
        return {}
    return {**sizes, "total_bytes": sum(sizes.values())}


def over_cap(spec: TaskSpec, measured: dict[str, float]) -> bool:
    """Is a projected size over its cap by more than the slack (only caps, `<=` and `<`, are projected)?"""
    return any(gate.op in ("<=", "<") and measured.get(gate.metric, 0.0) > gate.limit * (1 + SIZE_SLACK)
               for gate in size_gates(spec))


def check(task: Task, run_dir: Path, diff: str, log_path: Path, run: Runner) -> Failure | None:
    """Run the preflight of the trial exported in run_dir; None when the full run should go ahead.

    Blocks (it runs commands): call it from a worker thread. The log of the last check run is at log_path.
    """
    spec = task.spec
    budgets = spec.budgets
    files = changed_python_files(diff, run_dir)
    if files:
        limits = Limits(wall_s=SYNTAX_BUDGET_S, memory_mb=budgets.memory_mb, file_mb=budgets.file_mb)
        result = run(run_dir, limits, log_path, command=["{python}", "-c", COMPILE, *files])
        if _failed(result):
            return Failure("syntax", result, limits)
    if spec.preflight is None:
        return None
    smoke_dir = run_dir.with_name(f"{run_dir.name}-smoke")
    shutil.rmtree(smoke_dir, ignore_errors=True)
    try:
        shutil.copytree(run_dir, smoke_dir, symlinks=True)
        limits = Limits(wall_s=spec.preflight.budget_s, memory_mb=budgets.memory_mb, file_mb=budgets.file_mb)
        result = run(smoke_dir, limits, log_path, command=spec.preflight.command or None, env=SMOKE_ENV)
        if result.timed_out:
            return None
        if _failed(result):
            return Failure("smoke", result, limits)
        artifact_dir = smoke_dir / "artifact"
        if not artifact_dir.is_dir():
            return None  # the full run's own problem to report
        measured = projected_size(task, artifact_dir)
        if over_cap(spec, measured):
            return Failure("size", result, limits, measured)
        return None
    finally:
        shutil.rmtree(smoke_dir, ignore_errors=True)


def _failed(result: RunResult) -> bool:
    return result.timed_out or bool(result.exit_code) or result.signal is not None
