"""The evaluator process loop on a real nats-server: finished trials in, one labelled outcome each out."""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.connection import Bus
from bus.events import (
    CampaignStarted,
    CampaignStopped,
    Evidence,
    ObjectRef,
    TrialAbandoned,
    TrialFinished,
    TrialProposed,
    TrialRejected,
    TrialScored,
    decode,
)
from evaluator_artifacts import TASK, artifact_bytes
from evaluators.sandbox import SandboxPool
from evaluators.spec import load_task, pack_folder
from evaluators.worker import run_evaluator

pytestmark = pytest.mark.anyio
TESTS = Path(__file__).resolve().parent
WAIT_S = 90.0  # bounds every wait; a cold sandbox imports torch in a few seconds on a busy machine


class Outcomes:
    """Outcome and stop events as they arrive on core NATS, with their arrival time."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()

    async def subscribe(self, bus: Bus, campaign: str) -> None:
        async def arrived(msg):
            self.queue.put_nowait((time.monotonic(), decode(msg.data)))

        await bus.nc.subscribe(f"arx.ev.{campaign}.trial.*.outcome", cb=arrived)
        await bus.nc.subscribe(f"arx.ev.{campaign}.campaign.*.stopped", cb=arrived)

    async def next(self):
        return await asyncio.wait_for(self.queue.get(), WAIT_S)


async def start_campaign(bus: Bus, task, campaign: str, max_trials: int) -> None:
    bundle = await bus.put_object(f"bundles/{campaign}.tar.gz", task.bundle())
    await bus.publish(CampaignStarted(
        event_id=f"{campaign}-started", campaign_id=campaign, task=task.name, metric=task.spec.metric,
        direction=task.spec.direction, max_trials=max_trials, bundle=bundle, noise=task.spec.noise))


async def propose(bus: Bus, campaign: str, trial: str) -> None:
    await bus.publish(TrialProposed(
        event_id=f"{trial}-proposed", campaign_id=campaign, trial_id=trial, specialist="test", surface="optimizer",
        parent_id=None, hypothesis="a test trial", diff=""))


def finished(campaign: str, trial: str, **fields) -> TrialFinished:
    base = dict(event_id=f"{trial}-finished", campaign_id=campaign, trial_id=trial, executor="executor-test",
                exit_code=0, wall_s=10.0, limits={"train_s": 60.0, "memory_mb": 4096.0, "file_mb": 64.0})
    return TrialFinished(**{**base, **fields})


async def stored(bus: Bus, campaign: str) -> list:
    events = []
    async for batch in bus.read(subject=f"arx.ev.{campaign}.>"):
        events += [decode(m.data) for m in batch]
    return events


def crash_log(tmp_path: Path) -> str:
    (tmp_path / "train.py").write_text("def main():\n    return 1 / 0\nmain()\n")
    run = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    return run.stderr


async def test_trials_are_scored_once_and_the_campaign_stops_at_max_trials(arx_env, tmp_path, capsys):
    good, bad = artifact_bytes(tmp_path), artifact_bytes(tmp_path, trained=False)
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, TASK, "c1", max_trials=4)
        outcomes = Outcomes()
        await outcomes.subscribe(bus, "c1")
        good_ref = await bus.put_object("artifacts/good.tar.gz", good)
        bad_ref = await bus.put_object("artifacts/bad.tar.gz", bad)
        pool = SandboxPool(tmp_path)
        stop = asyncio.Event()
        evaluator = asyncio.create_task(run_evaluator(bus, name="evaluator-test", stop=stop, pool=pool))

        trials = [  # (trial, finished fields, expected label); the task's noise is 3% of the incumbent
            ("t1", dict(artifact=good_ref, wall_s=10.0), "keep"),
            ("t2", dict(exit_code=1, log_tail=crash_log(tmp_path)), "crash"),
            ("t3", dict(artifact=good_ref, wall_s=9.8), "within_noise"),
            ("t4", dict(artifact=bad_ref, wall_s=5.0), "disqualified"),
        ]
        latencies = []
        for trial, fields, expected in trials:
            await propose(bus, "c1", trial)
            await pool.wait_warm(TASK, WAIT_S)  # as in a campaign: training takes longer than warming up
            sent = time.monotonic()
            await bus.publish(finished("c1", trial, **fields))
            arrived, outcome = await outcomes.next()
            assert isinstance(outcome, TrialScored) and outcome.trial_id == trial
            assert outcome.label == expected, outcome.evidence
            if "artifact" in fields:
                latencies.append(arrived - sent)
            if trial == "t1":
                assert outcome.event_id == "arx.ev.c1.trial.t1.outcome" and outcome.score == 10.0
                assert outcome.metrics["accuracy"] > 0.96 and outcome.incumbent_id is None
                assert {g.gate: g.passed for g in outcome.gates} == {
                    "train_s": True, "eval_s": True, "accuracy": True, "seeds": True}
            if trial == "t2":
                assert outcome.evidence.frame == "train.py:2 in main"
                assert outcome.evidence.message == "ZeroDivisionError: division by zero"
            if trial == "t3":
                assert (outcome.incumbent_id, outcome.incumbent_score, outcome.noise) == ("t1", 10.0, 0.03)
            if trial == "t4":
                assert (outcome.evidence.gate, outcome.evidence.limit) == ("accuracy", 0.96)

        _, stopped = await outcomes.next()
        assert isinstance(stopped, CampaignStopped)
        assert (stopped.event_id, stopped.reason, stopped.trials) == ("arx.ev.c1.campaign.c1.stopped", "max_trials reached", 4)

        # A second delivery of a finished trial (an executor's retry) gets no second outcome. Proven in
        # order: the evaluator takes its queue one message at a time, so once a trial finished after the
        # retry is scored, the retry has been handled.
        await bus.publish(finished("c1", "t1", event_id="t1-finished-again", attempt=2, artifact=good_ref))
        marker = Outcomes()
        await marker.subscribe(bus, "c2")
        await start_campaign(bus, TASK, "c2", max_trials=4)
        await propose(bus, "c2", "m1")
        await bus.publish(finished("c2", "m1", artifact=good_ref))
        _, after = await marker.next()
        assert after.trial_id == "m1"
        assert outcomes.queue.empty()
        stop.set()
        await asyncio.wait_for(evaluator, WAIT_S)

        events = await stored(bus, "c1")
    outcome_counts = {t: sum(1 for e in events if isinstance(e, TrialScored) and e.trial_id == t)
                      for t, _, _ in trials}
    assert outcome_counts == {"t1": 1, "t2": 1, "t3": 1, "t4": 1}
    assert sum(isinstance(e, CampaignStopped) for e in events) == 1
    with capsys.disabled():
        print(f"\nFinished -> Scored with a warm sandbox: {[round(x, 3) for x in latencies]} s,"
              f" median {statistics.median(latencies):.3f} s (a benchmark, not a test: scripts/bench_overhead.py)")


async def test_outcomes_of_others_count_and_bad_messages_do_not_stop_the_evaluator(arx_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ARX_TASKS_PATH", str(TESTS / "tasks"))  # tiny: no torch, scores a number
    tiny = load_task("tiny")
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "value.txt").write_text("3.5\n")
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, tiny, "c2", max_trials=3)
        outcomes = Outcomes()
        await outcomes.subscribe(bus, "c2")
        await outcomes.subscribe(bus, "ghost")
        stop = asyncio.Event()
        evaluator = asyncio.create_task(run_evaluator(bus, name="evaluator-test", stop=stop))

        await bus.js.publish("arx.ev.c2.trial.junk.finished.1", b"not an event")
        await bus.publish(finished("ghost", "g1"))  # a campaign that never started
        _, abandoned = await outcomes.next()
        assert isinstance(abandoned, TrialAbandoned) and abandoned.label == "harness_abort"
        assert "ghost" in abandoned.evidence.message

        for trial in ("a1", "a2", "a3"):
            await propose(bus, "c2", trial)
        ref = await bus.put_object("artifacts/a1.tar.gz", pack_folder(artifact))
        await bus.publish(finished("c2", "a1", artifact=ref, wall_s=0.1))
        _, scored = await outcomes.next()
        assert (scored.trial_id, scored.label, scored.score) == ("a1", "keep", 3.5)

        await bus.publish(finished("c2", "a2", artifact=None))  # the run left nothing to score
        _, scored = await outcomes.next()
        assert (scored.label, scored.evidence.stage) == ("crash", "artifact")
        lost = ObjectRef(name="artifacts/lost.tar.gz", size=10, sha256="0" * 64)
        await bus.publish(finished("c2", "a3", artifact=lost))  # uploaded nowhere
        _, scored = await outcomes.next()
        assert (scored.trial_id, scored.label, scored.evidence.stage) == ("a3", "crash", "artifact")

        _, stopped = await outcomes.next()
        assert isinstance(stopped, CampaignStopped) and stopped.trials == 3
        stop.set()
        await asyncio.wait_for(evaluator, WAIT_S)


async def test_a_campaign_whose_last_trial_was_rejected_by_another_role_still_stops(arx_env, monkeypatch):
    monkeypatch.setenv("ARX_TASKS_PATH", str(TESTS / "tasks"))
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, load_task("tiny"), "c3", max_trials=1)
        outcomes = Outcomes()
        await outcomes.subscribe(bus, "c3")
        stop = asyncio.Event()
        evaluator = asyncio.create_task(run_evaluator(bus, name="evaluator-test", stop=stop))
        await propose(bus, "c3", "r1")
        await bus.publish(TrialRejected(event_id="r1-outcome", campaign_id="c3", trial_id="r1",
                                        evidence=Evidence(stage="edit", message="patch does not apply")))
        rejected = await outcomes.next()
        assert isinstance(rejected[1], TrialRejected)
        _, stopped = await outcomes.next()
        assert isinstance(stopped, CampaignStopped) and stopped.trials == 1
        stop.set()
        await asyncio.wait_for(evaluator, WAIT_S)


def test_arx_evaluator_runs_until_sigterm(arx_env, tmp_path):
    log = tmp_path / "evaluator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(TESTS.parent / "arx.py"), "evaluator"], env=arx_env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while "evaluating arx.ev.*.trial.*.finished.*" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert f"evaluator-{socket.gethostname()}-{proc.pid}" in log.read_text()  # the default name
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
