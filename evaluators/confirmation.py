"""Confirming a keep whose margin is within the noise: the executors rerun the candidate and the
incumbent interleaved, and the reruns decide (evaluators/labels.py judges them)."""

from __future__ import annotations

import asyncio
import time

from bus import subjects
from bus.connection import Bus
from bus.events import ReplicateFinished, TrialConfirmationRequested, TrialFinished, replicate_id
from evaluators import labels
from evaluators.scoring import Scorer
from evaluators.spec import Task, TaskSpec

RERUN_POLL_S = 0.5
# A confirmation's reruns wait in the executors' queue behind up to this many runs' worth of trials.
CONFIRM_QUEUE_RUNS = 10
RUN_OVERHEAD_S = 30.0  # per run: materialize, prepare, upload


def confirmation_timeout(spec: TaskSpec, runs: int) -> float:
    """How long a candidate may wait for its reruns before it is left unconfirmed."""
    per_run = spec.budgets.train_s + spec.budgets.eval_s + RUN_OVERHEAD_S
    return (runs + CONFIRM_QUEUE_RUNS) * per_run


async def confirm(bus: Bus, scorer: Scorer, task: Task, finished: TrialFinished, first: labels.Verdict, *,
                  incumbent_id: str, noise: float, producer: str) -> tuple[labels.Verdict, float]:
    """Ask the executors to rerun the candidate and the incumbent interleaved, then judge the reruns.
    Returns the verdict and the seconds spent scoring the reruns."""
    c, candidate = finished.campaign_id, finished.trial_id
    request = TrialConfirmationRequested(
        campaign_id=c, producer=producer, causation_id=finished.event_id,
        trial_id=candidate, incumbent_id=incumbent_id, runs=labels.confirmation_runs(candidate, incumbent_id),
    )
    await bus.publish(request)
    # For a redelivered trial, the reruns asked for the first time are the ones that count.
    request = await bus.last_event(request.subject)
    timeout = confirmation_timeout(task.spec, len(request.runs))
    deadline = time.monotonic() + timeout
    runs, eval_s = [], 0.0
    for index, trial_id in enumerate(request.runs):
        rerun = await _rerun(bus, c, candidate, index, deadline)
        if rerun is None:
            return labels.unconfirmed(first, f"rerun {index} did not finish within {timeout:.0f}s"), eval_s
        evaluation = await scorer.evaluate(task, rerun) if labels.scorable(rerun) else None
        eval_s += evaluation.wall_s if evaluation else 0.0
        runs.append((trial_id, labels.judge(rerun, task.spec, evaluation)))
    return labels.confirm(task.spec, first, runs, candidate, request.incumbent_id, noise), eval_s


async def _rerun(bus: Bus, c: str, candidate: str, index: int, deadline: float) -> ReplicateFinished | None:
    subject = subjects.replicate(c, replicate_id(candidate, index))
    while (rerun := await bus.last_event(subject)) is None:
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(RERUN_POLL_S)
    return rerun
