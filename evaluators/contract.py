"""The task contract: the functions of a task's task.py that arx calls by name, and the check that a
task.py has them.

One Protocol per way a task is scored (TaskSpec.scored_from) names the functions that kind must have;
SizedArtifact and HoldoutSplit name the optional ones. A task module implements them as a module does
(PEP 544): its functions are the methods without `self`, so a type checker accepts `task.module()`
wherever one of them is expected.

They are checked by hand (`check_module`), not with @runtime_checkable and isinstance(): isinstance
answers only yes or no, where whoever writes a task needs the names of the functions it lacks.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: loading a task need not import numpy
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent


class ArtifactScoredTask(Protocol):
    """A task whose evaluator scores the run's artifact (scored_from = "artifact", the default)."""

    def prepare(self, run_dir: Path) -> None:
        """Executor, before each run (executors/worker.py, evaluators/noise.py): put its training data in run_dir."""

    def heldout(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Evaluator, once per task (evaluators/scoring.py): held-out inputs, and the targets predict() never sees."""

    def predict(self, artifact_dir: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluator's sandbox, per artifact (evaluators/sandbox_child.py): the trained model's outputs on inputs."""

    def metrics(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, float]:
        """Evaluator, after predict() (evaluators/scoring.py): the metrics of its outputs against the targets."""


class LogScoredTask(Protocol):
    """A task scored from its run's log (scored_from = "log"): official tasks, whose log is the official output."""

    def prepare(self, run_dir: Path) -> None:
        """Executor, before each run (executors/worker.py, evaluators/noise.py): link the user's data into run_dir."""

    def parse_log(self, text: str) -> dict[str, float]:
        """Evaluator, per finished run (evaluators/official_log.py): the metrics the log states, or LogFormatError."""


class SizedArtifact(Protocol):
    """Optional, of either kind; used only when the task has a size gate."""

    def artifact_size(self, artifact_dir: Path) -> dict[str, int]:
        """Executor's preflight (executors/preflight.py), on a smoke run's artifact: the bytes a size gate sums."""


class HoldoutSplit(Protocol):
    """Optional, of an artifact-scored task; used only by `arx audit --holdout`."""

    def holdout(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The audit (evaluators/holdout.py): a second held-out split, disjoint from heldout()'s and from the
        training data, in heldout()'s form; no keep decision uses it, so it tells whether the keeps generalize."""


KINDS = {"artifact": ("an artifact-scored task", ArtifactScoredTask), "log": ("a log-scored task", LogScoredTask)}


def signatures(protocol: type) -> dict[str, str]:
    """A Protocol's functions by name, each as task.py declares it, e.g. 'metrics(outputs, targets)'."""
    return {name: f"{name}({', '.join(list(inspect.signature(function).parameters)[1:])})"
            for name, function in vars(protocol).items() if inspect.isfunction(function) and not name.startswith("_")}


REQUIRED = {scored_from: signatures(protocol) for scored_from, (_, protocol) in KINDS.items()}
OPTIONAL = {**signatures(SizedArtifact), **signatures(HoldoutSplit)}


def check_module(module: ModuleType, task: str, scored_from: str, path: Path) -> None:
    """ValueError naming the task, its task.py and each function it lacks of those its kind requires."""
    lacking = [shown for name, shown in REQUIRED[scored_from].items() if not callable(getattr(module, name, None))]
    if lacking:
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        raise ValueError(f"task {task}: {where} lacks {', '.join(lacking)} required of {KINDS[scored_from][0]}")
