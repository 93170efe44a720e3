"""Shared steps of the agent tests: start a campaign as `arx campaign start` does, record outcomes."""

from __future__ import annotations

import contextlib
import uuid
from functools import partial

import anyio

from agents.base import Specialist
from agents.edits import knob_values
from agents.trees import bundle_files
from bus.connection import Bus
from bus.events import (
    CampaignStarted, CampaignStopped, SpecialistJoined, TrialAbandoned, TrialProposed, TrialScored,
)
from evaluators.spec import Task, load_task
from executors.worker import run_executor
from projections.follow import catch_up
from projections.lineage import Lineage

TASK = load_task("digits-speedrun")


@contextlib.asynccontextmanager
async def executor_beside(bus: Bus):
    """An executor for the duration: it writes the invalid_edit outcome of each proposal that an agent
    rejected itself (agents write no outcomes)."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(run_executor, bus, name="ex-1", stop=stop))
        try:
            yield
        finally:
            stop.set()


BASELINE_FILES = bundle_files(TASK.bundle())
BASELINE_PARAMS = knob_values(BASELINE_FILES, TASK.spec.knobs)


async def start_campaign(
    bus: Bus, c: str, *, max_trials: int = 20, baseline_params: bool = True, task: Task = TASK, arm: str = "lineage"
) -> None:
    """CampaignStarted with the task's bundle, then the baseline trial."""
    bundle = task.bundle()
    ref = await bus.put_object(f"{c}-bundle", bundle)
    spec = task.spec
    started = CampaignStarted(
        event_id=f"{c}-started",
        campaign_id=c,
        task=spec.name,
        metric=spec.metric,
        direction=spec.direction,
        max_trials=max_trials,
        bundle=ref,
        noise=spec.noise,
        arm=arm,
    )
    await bus.publish(started)
    params = knob_values(bundle_files(bundle), spec.knobs) if baseline_params else {}
    await propose(bus, c, "baseline", None, "", params=params, specialist="baseline")


async def propose(
    bus: Bus, c: str, trial_id: str, parent_id: str | None, diff: str, *, params=None, specialist: str = "other"
) -> None:
    proposed = TrialProposed(
        event_id=f"{c}-{trial_id}-proposed",
        campaign_id=c,
        trial_id=trial_id,
        specialist=specialist,
        surface=specialist,
        parent_id=parent_id,
        hypothesis=f"test trial {trial_id}",
        diff=diff,
        params=params or {},
    )
    await bus.publish(proposed)


async def score(bus: Bus, c: str, trial_id: str, value: float | None = 10.0, label: str = "keep") -> None:
    outcome = TrialScored(
        event_id=f"{c}-{trial_id}-outcome", campaign_id=c, trial_id=trial_id, label=label, score=value
    )
    await bus.publish(outcome)


async def abandon(bus: Bus, c: str, trial_id: str) -> None:
    outcome = TrialAbandoned(event_id=f"{c}-{trial_id}-outcome", campaign_id=c, trial_id=trial_id)
    await bus.publish(outcome)


async def stop_campaign(bus: Bus, c: str) -> None:
    await bus.publish(CampaignStopped(event_id=f"{c}-stopped", campaign_id=c, reason="test"))


async def folded(bus: Bus) -> Lineage:
    """A fresh lineage with everything in the log now."""
    lineage = Lineage()
    await catch_up(bus, lineage)
    return lineage


async def trials_of(bus: Bus, c: str, specialist: str) -> list[dict]:
    lineage = await folded(bus)
    rows = lineage.query(
        "SELECT * FROM trials WHERE campaign_id = ? AND specialist = ? ORDER BY proposed_seq", (c, specialist)
    )
    lineage.close()
    return rows


async def wait_for_trials(bus: Bus, c: str, specialist: str, count: int, timeout: float = 15.0) -> list[dict]:
    """Poll the log until the specialist has proposed `count` trials; fail after timeout."""
    with anyio.fail_after(timeout):
        while len(rows := await trials_of(bus, c, specialist)) < count:
            await anyio.sleep(0.05)
    return rows


async def stays_at(bus: Bus, agent: Specialist, c: str, count: int, timeout: float = 15.0) -> bool:
    """True if the agent has exactly `count` trials once it has settled past a marker published now:
    the absence of more is proven in the log's order, not by waiting a while."""
    await bus.publish(SpecialistJoined(campaign_id="markers", producer="test", specialist=f"m{uuid.uuid4().hex[:8]}",
                                       surface="*", policy="marker"))
    marker = await bus.last_seq()
    with anyio.fail_after(timeout):
        while agent.settled_seq < marker:
            await anyio.sleep(0.02)
    return len(await trials_of(bus, c, agent.specialist)) == count


