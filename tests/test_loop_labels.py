"""Bad trials through the real executor and evaluator processes: each ends as exactly one labelled outcome."""

from __future__ import annotations

import asyncio
import difflib
from pathlib import Path

import pytest

from bus.connection import Bus
from bus.events import TrialProposed, TrialStarted, decode
from cluster import Cluster
RECIPE = Path(__file__).parent / "tasks" / "tiny" / "recipe" / "train.py"


def edit(old: str, new: str, path: str = "train.py") -> str:
    text = RECIPE.read_text()
    assert old in text
    lines = difflib.unified_diff(
        text.splitlines(keepends=True), text.replace(old, new).splitlines(keepends=True), f"a/{path}", f"b/{path}"
    )
    return "".join(lines)


def proposal(campaign: str, trial_id: str, diff: str, surface: str = "main") -> TrialProposed:
    return TrialProposed(
        event_id=f"{trial_id}-proposed", campaign_id=campaign, trial_id=trial_id, specialist="test",
        surface=surface, parent_id="baseline", hypothesis=f"test {trial_id}", diff=diff,
    )


async def outcome(bus: Bus, campaign: str, trial_id: str, timeout: float = 90):
    subject = f"arx.ev.{campaign}.trial.{trial_id}.outcome"
    for _ in range(int(timeout * 4)):
        event = await bus.last_event(subject)
        if event is not None:
            return event
        await asyncio.sleep(0.25)
    raise TimeoutError(f"no outcome for {trial_id}")


async def count(bus: Bus, subject: str) -> int:
    return sum([len(batch) async for batch in bus.read(subject=subject)])


@pytest.fixture
def cluster(arx_env, tmp_path):
    cluster = Cluster(arx_env, tmp_path / "logs")
    cluster.start("evaluator", "evaluator", "--name", "evaluator-1")
    yield cluster
    cluster.stop_all()


def test_crash_hang_and_bad_edits_get_their_labels(cluster):
    cluster.start("executor", "executor", "--name", "executor-1")
    assert cluster.arx("campaign", "start", "--task", "tiny", "--trials", "9", "--campaign", "bad").returncode == 0
    trials = {
        "crash": edit("time.sleep(SLEEP)", "time.sleep(SLEEP)\nraise RuntimeError('boom')"),
        "hang": edit("SLEEP = 0.0", "SLEEP = 100.0"),
        "gate": edit("VALUE = 5.0", "VALUE = -3.0"),
        "noapply": edit("VALUE = 5.0", "VALUE = 1.0").replace("VALUE = 5.0", "VALUE = 7.0"),
        "outside": edit("VALUE = 5.0", "VALUE = 1.0").replace("train.py", "../escape.py"),
        "better": edit("VALUE = 5.0", "VALUE = 1.0"),
    }

    async def run():
        async with await Bus.connect(role="admin") as bus:
            for trial_id, diff in trials.items():
                await bus.publish(proposal("bad", trial_id, diff))
            outcomes = {t: await outcome(bus, "bad", t) for t in ["baseline", *trials]}
            counts = {t: await count(bus, f"arx.ev.bad.trial.{t}.outcome") for t in outcomes}
            return outcomes, counts

    outcomes, counts = asyncio.run(run())
    labels = {trial: event.label for trial, event in outcomes.items()}
    assert labels == {
        "baseline": "keep",
        "crash": "crash",
        "hang": "train_budget_overrun",
        "gate": "disqualified",
        "noapply": "invalid_edit",
        "outside": "invalid_edit",
        "better": "keep",
    }
    assert set(counts.values()) == {1}
    assert "train.py" in outcomes["crash"].evidence.frame and "boom" in outcomes["crash"].evidence.message
    assert outcomes["hang"].evidence.limit == 4
    assert outcomes["gate"].evidence.gate == "value" and outcomes["gate"].evidence.measured == -3.0
    assert "escape.py" in outcomes["outside"].evidence.message
    assert outcomes["better"].score == 1.0 and outcomes["better"].incumbent_id == "baseline"


def test_killed_executor_loses_its_trial_to_another_and_it_is_scored_once(cluster):
    cluster.start("executor-a", "executor", "--name", "executor-a")
    assert cluster.arx("campaign", "start", "--task", "tiny", "--trials", "3", "--campaign", "kill").returncode == 0

    async def run():
        async with await Bus.connect(role="admin") as bus:
            await outcome(bus, "kill", "baseline")
            await bus.publish(proposal("kill", "slow", edit("SLEEP = 0.0", "SLEEP = 2.5")))
            async with asyncio.timeout(60):
                while (await bus.last_event("arx.ev.kill.trial.slow.started.*")) is None:
                    await asyncio.sleep(0.05)
            cluster.kill("executor-a")  # SIGKILL mid-trial: its message stays unacked
            cluster.start("executor-b", "executor", "--name", "executor-b")
            scored = await outcome(bus, "kill", "slow", timeout=60)
            starts = [decode(m.data) async for batch in bus.read(subject="arx.ev.kill.trial.slow.started.*") for m in batch]
            return scored, starts, await count(bus, "arx.ev.kill.trial.slow.outcome")

    scored, starts, outcomes = asyncio.run(run())
    assert all(isinstance(s, TrialStarted) for s in starts)
    assert [s.executor for s in starts] == ["executor-a", "executor-b"]
    assert outcomes == 1
    assert scored.label == "discard" and scored.score == 5.0
