"""Re-measuring trials of a timing task: each trial's tree, built from the log as an executor builds it,
run again on this host for a few rounds, interleaved, so that a drift of the machine's speed hits every
trial alike.

For `arx audit --holdout` (evaluators/holdout.py): a timing task's score is the run's wall time, which no
held-out data re-scores, so what is checked is whether the keeps' speed-ups hold when measured again.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bus import subjects
from bus.connection import Bus
from bus.events import CampaignStarted, TrialProposed
from evaluators import labels
from evaluators.noise import judged_run
from evaluators.sandbox import scratch
from evaluators.spec import Task
from executors.trees import CampaignRepo, materialize


@dataclass(frozen=True)
class Rerun:
    trial_id: str
    round: int
    verdict: labels.Verdict


async def remeasure(bus: Bus, task: Task, campaign_id: str, trial_ids: list[str], rounds: int, data: tuple, *,
                    home: Path, progress: Callable[[str], None]) -> list[Rerun]:
    """Every trial run `rounds` times, in order in even rounds and in reverse order in odd ones (so that a
    trial is not always the one after the same other), each run judged as evaluators.noise.judged_run
    judges it, its artifact scored on `data` (inputs, targets); the reruns in the order they ran."""
    repo = CampaignRepo.for_campaign(home, campaign_id)
    commits = {trial_id: await _commit(bus, repo, campaign_id, trial_id) for trial_id in trial_ids}
    reruns = []
    async with scratch(home, f"remeasure-{campaign_id}-") as (work, pool):
        for index in range(rounds):
            for trial_id in trial_ids if index % 2 == 0 else trial_ids[::-1]:
                run_dir = work / f"{trial_id}-{index}"
                await asyncio.to_thread(repo.export, commits[trial_id], run_dir)
                verdict = await judged_run(task, run_dir, pool, data, home=home)
                reruns.append(Rerun(trial_id, index, verdict))
                progress(f"{trial_id}, round {index}: {verdict.label}, {task.spec.score} {verdict.score}")
                await asyncio.to_thread(shutil.rmtree, run_dir, ignore_errors=True)
    return reruns


async def _commit(bus: Bus, repo: CampaignRepo, campaign_id: str, trial_id: str) -> str:
    """The trial's commit in this host's campaign repository, built from the log where it is missing."""
    started = await bus.last_event(subjects.campaign(campaign_id, "started"))
    proposal = await bus.last_event(subjects.trial(campaign_id, trial_id, "proposed"))
    if not isinstance(started, CampaignStarted) or not isinstance(proposal, TrialProposed):
        raise RuntimeError(f"campaign {campaign_id}: the log lacks its start or trial {trial_id}'s proposal")
    return await materialize(bus, repo, proposal, started)
