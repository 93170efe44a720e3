"""How an evaluator scores a finished run: the task's held-out data through its sandbox, or the run's
official log. Everything here measures; judging the measurement is evaluators/labels.py."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import traceback
from pathlib import Path

from nats.js.errors import NotFoundError

from bus.connection import Bus
from bus.events import _RunFinished
from evaluators import labels
from evaluators.official_log import evaluate_log
from evaluators.sandbox import SandboxPool, SandboxResult
from evaluators.spec import Task, campaign_task
from evaluators.unpack import UnsafeArtifact, unpack_artifact
from projections.views import Campaign


def to_evaluation(task: Task, result: SandboxResult, targets, artifact_dir: Path) -> labels.Evaluation:
    """Score the sandbox's outputs against the held-out targets, here in the evaluator's process."""
    if result.timed_out:
        return labels.Evaluation(failed="eval_budget", wall_s=result.wall_s)
    if result.outputs is None:
        return labels.Evaluation(failed="evaluate", error=result.error, root=str(artifact_dir.resolve()),
                                 signal=result.signal, wall_s=result.wall_s)
    try:
        measured = task.module().metrics(result.outputs, targets)
        metrics = {str(k): float(v) for k, v in measured.items()}
    except Exception:  # outputs the task cannot score are the model's failure
        return labels.Evaluation(failed="evaluate", error=traceback.format_exc(), wall_s=result.wall_s)
    return labels.Evaluation(metrics=metrics, wall_s=result.wall_s)


async def evaluate_artifact(pool: SandboxPool, task: Task, data: bytes, inputs, targets, *, name: str
                            ) -> labels.Evaluation:
    """Unpack a packed artifact (refusing unsafe members) and score it in the task's sandbox."""
    artifact_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=pool.root))
    try:
        try:
            await asyncio.to_thread(unpack_artifact, data, artifact_dir)
        except UnsafeArtifact as exc:
            return labels.Evaluation(failed="artifact", error=str(exc))
        result = await pool.run(task, artifact_dir, inputs)
        return to_evaluation(task, result, targets, artifact_dir)
    finally:
        shutil.rmtree(artifact_dir, ignore_errors=True)


class Scorer:
    """Scores runs of the campaigns' tasks; keeps each task, its held-out data and its sandbox warm."""

    def __init__(self, bus: Bus, pool: SandboxPool):
        self.bus = bus
        self.pool = pool
        self._tasks: dict[str, Task] = {}
        self._heldout: dict[str, asyncio.Future] = {}

    def task(self, campaign: Campaign) -> Task:
        """The campaign's task, by the spec its CampaignStarted recorded."""
        c = campaign.campaign_id
        if c not in self._tasks:
            self._tasks[c] = campaign_task(campaign.task, campaign.spec)
        return self._tasks[c]

    def warm(self, task: Task) -> None:
        """Start the task's sandbox process and its held-out data before its first run arrives."""
        if task.spec.scored_from == "log":  # no held-out data, no sandbox: the log is parsed here
            return
        self.pool.warm(task)
        self._heldout_future(task)

    def _heldout_future(self, task: Task) -> asyncio.Future:
        """The task's held-out inputs and targets, computed once per task, off the event loop."""
        if task.name not in self._heldout:
            self._heldout[task.name] = asyncio.ensure_future(asyncio.to_thread(task.module().heldout))
        return self._heldout[task.name]

    async def heldout(self, task: Task):
        try:
            return await asyncio.shield(self._heldout_future(task))
        except Exception:
            self._heldout.pop(task.name, None)  # try again for the next trial
            raise

    async def evaluate(self, task: Task, finished: _RunFinished) -> labels.Evaluation:
        if task.spec.scored_from == "log":  # official tasks: the captured log is the official output
            return await evaluate_log(self.bus, task, finished)
        data = await stored_artifact(self.bus, finished)
        if isinstance(data, labels.Evaluation):
            return data
        inputs, targets = await self.heldout(task)
        return await evaluate_artifact(self.pool, task, data, inputs, targets, name=finished.trial_id)


async def stored_artifact(bus: Bus, finished: _RunFinished) -> bytes | labels.Evaluation:
    """The run's artifact from the object store, or the failed evaluation that says why there is none."""
    if finished.artifact is None:
        return labels.Evaluation(failed="artifact", error="the run produced no artifact")
    try:
        return await bus.get_object(finished.artifact)
    except (NotFoundError, ValueError) as exc:
        return labels.Evaluation(failed="artifact", error=f"artifact {finished.artifact.name}: {exc}")
