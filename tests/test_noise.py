"""The noise floor: measuring it, recording it in the campaign, showing it, and keeping only wins beyond it,
with close wins confirmed by reruns of the candidate and the incumbent interleaved."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from cluster import ROOT, Cluster
from tiny_tasks import WAIT_S, edit, proposal, stored, use_tasks, wait_event, write_task

from bus.connection import Bus
from bus.events import (
    Evidence,
    ReplicateFinished,
    TrialConfirmationRequested,
    TrialFinished,
    TrialScored,
)
from evaluators import labels
from evaluators.campaign import start_campaign
from evaluators.noise import noise_stats
from evaluators.spec import Task, TaskSpec, load_task, pack_folder
from evaluators.worker import run_evaluator
from executors.worker import run_executor
from projections import views
from projections.follow import catch_up
from projections.lineage import Lineage
from projections.views import Incumbent

TESTS = Path(__file__).resolve().parent

# -- statistics ---------------------------------------------------------------------------------------


def test_noise_stats_are_relative_to_the_median():
    stats = noise_stats([10.0, 10.5, 9.5, 11.0, 9.0])
    assert (stats.runs, stats.median, stats.mean) == (5, 10.0, 10.0)
    assert stats.std == pytest.approx(0.790569, rel=1e-5)
    assert stats.relative_std == pytest.approx(0.0790569, rel=1e-5)
    assert stats.spread == pytest.approx(0.2)
    assert noise_stats([-2.0, -2.0]).relative_std == 0.0
    with pytest.raises(ValueError, match="at least 2 scores"):
        noise_stats([1.0])
    with pytest.raises(ValueError, match="median score is 0"):
        noise_stats([-1.0, 0.0, 1.0])


def spec(direction: str) -> TaskSpec:
    return msgspec.structs.replace(Task(TESTS / "tasks" / "tiny").spec, direction=direction)


@pytest.mark.parametrize("direction", ["min", "max"])
def test_only_wins_between_one_and_three_noise_margins_are_rerun(direction):
    task_spec = spec(direction)
    better = -1.0 if direction == "min" else 1.0
    incumbent = Incumbent("inc", 10.0)  # noise 0.1: a margin of 1.0
    for gain, rerun in [(0.5, False), (1.0, False), (1.01, True), (3.0, True), (3.01, False), (-2.0, False)]:
        assert labels.needs_confirmation(task_spec, 10.0 + better * gain, incumbent, 0.1) is rerun, gain
    assert not labels.needs_confirmation(task_spec, 10.0 + better * 2.0, None, 0.1)
    assert not labels.needs_confirmation(task_spec, 10.0 + better * 2.0, incumbent, 0.0)
    assert labels.confirmation_runs("cand", "inc", pairs=2) == ["cand", "inc", "cand", "inc"]


def passed(score: float) -> labels.Verdict:
    return labels.Verdict(labels.PASSED, score)


def test_confirmation_decides_on_the_medians_of_the_reruns_only():
    task_spec = spec("min")
    first = labels.Verdict("keep", 8.0, evidence=Evidence(stage="compare"))  # 2 margins better than 10
    reruns = [("c", passed(8.2)), ("i", passed(10.1)), ("c", passed(30.0)), ("i", passed(9.9)),
              ("c", passed(8.4)), ("i", passed(10.0))]
    kept = labels.confirm(task_spec, first, reruns, "c", "i", 0.1)
    assert (kept.label, kept.score, kept.incumbent_score) == ("keep", 8.4, 10.0)  # one slow rerun changes nothing
    assert kept.evidence.stage == "confirm" and kept.evidence.limit == pytest.approx(9.0)
    assert "median 8.4 [8.2, 30, 8.4]" in kept.evidence.message and "first run 8" in kept.evidence.message

    lucky = [("c", passed(9.6)), ("i", passed(10.0))] * 3  # better, but not by a margin: the first run was lucky
    verdict = labels.confirm(task_spec, first, lucky, "c", "i", 0.1)
    assert (verdict.label, verdict.score, verdict.incumbent_score) == ("within_noise", 9.6, 10.0)
    worse = [("c", passed(10.5)), ("i", passed(10.0))] * 3
    assert labels.confirm(task_spec, first, worse, "c", "i", 0.1).label == "discard"

    crashed = labels.Verdict("crash", evidence=Evidence(stage="train", frame="train.py:3", message="boom"))
    verdict = labels.confirm(task_spec, first, [("c", passed(8.0)), ("i", passed(10.0)), ("c", crashed)], "c", "i", 0.1)
    assert (verdict.label, verdict.score, verdict.evidence.stage, verdict.evidence.frame) == (
        "within_noise", 8.0, "confirm", "train.py:3")
    assert verdict.evidence.message == "not confirmed: rerun 2 of the candidate gave crash: boom"
    with pytest.raises(ValueError, match="needs reruns"):
        labels.confirm(task_spec, first, [("c", passed(8.0))], "c", "i", 0.1)


# -- the loop: a close win is rerun, interleaved, before it may be kept ---------------------------------


async def lucky_draw(bus: Bus, tmp_path: Path, campaign: str, trial: str, value: float) -> None:
    """Report a run of `trial` that scored `value`, whatever its tree gives (a lucky draw of the noise)."""
    artifact = tmp_path / f"{trial}-artifact"
    artifact.mkdir()
    (artifact / "value.txt").write_text(f"{value}\n")
    (artifact / "weights.bin").write_bytes(bytes(100))
    ref = await bus.put_object(f"artifacts/{campaign}/{trial}-lucky.tar.gz", pack_folder(artifact))
    await bus.publish(TrialFinished(event_id=f"{campaign}-{trial}-finished-1", campaign_id=campaign, trial_id=trial,
                                    executor="a-lucky-draw", exit_code=0, wall_s=0.1, artifact=ref))


@pytest.mark.anyio
async def test_close_wins_are_confirmed_by_interleaved_reruns(arx_env, tmp_path, monkeypatch):
    write_task(tmp_path / "tasks", "tiny-noisy", noise=0.1)
    use_tasks(monkeypatch, tmp_path / "tasks")
    task = load_task("tiny-noisy")
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, task, campaign_id="c1", trials=10)
        evaluator_stop = asyncio.Event()
        evaluator = asyncio.create_task(run_evaluator(bus, name="ev", stop=evaluator_stop))
        executor_stop = asyncio.Event()
        executor = asyncio.create_task(run_executor(bus, name="ex-1", stop=executor_stop))
        try:
            base = await wait_event(bus, "c1", "trial", "baseline", "outcome")
            assert (base.label, base.score) == ("keep", 5.0)

            # "lucky" changes nothing (its tree scores 5.0), but its first run is reported as 4.2.
            executor_stop.set()
            await asyncio.wait_for(executor, WAIT_S)
            await bus.publish(proposal("c1", "lucky", edit("SLEEP = 0.0", "SLEEP = 0.01")))
            await lucky_draw(bus, tmp_path, "c1", "lucky", 4.2)
            executor_stop = asyncio.Event()
            executor = asyncio.create_task(run_executor(bus, name="ex-2", stop=executor_stop))
            lucky = await wait_event(bus, "c1", "trial", "lucky", "outcome")

            # A real close win: 4.2 against 5.0 is 1.6 noise margins of 0.5.
            await bus.publish(proposal("c1", "close", edit("VALUE = 5.0", "VALUE = 4.2")))
            close = await wait_event(bus, "c1", "trial", "close", "outcome")
            # A clear win, over 3 margins of the new incumbent's 0.42: kept on its first run.
            await bus.publish(proposal("c1", "clear", edit("VALUE = 5.0", "VALUE = 2.0")))
            clear = await wait_event(bus, "c1", "trial", "clear", "outcome")
        finally:
            executor_stop.set()
            evaluator_stop.set()
            await asyncio.wait_for(asyncio.gather(executor, evaluator), WAIT_S)
        events = await stored(bus, "c1")
        lineage = Lineage()
        await catch_up(bus, lineage)

    # Its reruns are no better than the incumbent's: the first run's win was noise.
    assert (lucky.label, lucky.evidence.stage, lucky.score, lucky.incumbent_score) == ("discard", "confirm", 5.0, 5.0)
    assert "first run 4.2" in lucky.evidence.message
    assert (close.label, close.evidence.stage, close.score, close.incumbent_score) == ("keep", "confirm", 4.2, 5.0)
    assert (clear.label, clear.evidence.stage, clear.incumbent_id, clear.score) == ("keep", "compare", "close", 2.0)

    outcomes = [e.trial_id for e in events if isinstance(e, TrialScored)]
    assert sorted(outcomes) == ["baseline", "clear", "close", "lucky"]  # exactly one each
    requests = [e for e in events if isinstance(e, TrialConfirmationRequested)]
    assert [(r.trial_id, r.incumbent_id, r.runs) for r in requests] == [
        ("lucky", "baseline", ["lucky", "baseline"] * 3), ("close", "baseline", ["close", "baseline"] * 3)]
    for candidate in ("lucky", "close"):
        reruns = [e for e in events if isinstance(e, ReplicateFinished) and e.confirm_of == candidate]
        # In the log, in the order asked for: candidate, incumbent, candidate, ...
        assert [(r.index, r.trial_id) for r in reruns] == list(enumerate([candidate, "baseline"] * 3))
        assert all(r.exit_code == 0 and r.artifact is not None for r in reruns)
    summary = views.summary(lineage, "c1")
    # Reruns are not trials: four proposed, four scored, none in flight, two settled by a confirmation.
    assert (summary["trials_proposed"], summary["trials_scored"], summary["in_flight"]) == (4, 4, 0)
    assert (summary["confirmed"], summary["noise"], summary["noise_prior"]) == (2, 0.1, 0.1)
    assert summary["labels"] == {"keep": 3, "discard": 1}
    assert views.counted_outcomes(lineage, "c1") == 4


# -- timed trials on one host: never overlapping, pinned; `arx noise` and `--measure-noise` ----------------


def tiny_cluster(arx_env, tmp_path, monkeypatch) -> Cluster:
    tasks = tmp_path / "tasks"
    write_task(tasks, "tiny-timed", score="wall_s", noise=0.05, exclusive_cores=1)
    use_tasks(monkeypatch, tasks)
    return Cluster({**arx_env, "ARX_TASKS_PATH": os.environ["ARX_TASKS_PATH"]}, tmp_path / "logs")


def test_two_executors_on_one_host_never_overlap_timed_trials_and_pin_them(arx_env, tmp_path, monkeypatch):
    cluster = tiny_cluster(arx_env, tmp_path, monkeypatch)
    trials = ["t1", "t2", "t3"]

    async def publish() -> None:
        async with await Bus.connect(role="admin") as bus:
            await start_campaign(bus, load_task("tiny-timed"), campaign_id="c1", trials=10)
            for trial in trials:
                await bus.publish(proposal("c1", trial, edit("SLEEP = 0.0", "SLEEP = 0.4")))

    async def finished() -> list[TrialFinished]:
        async with await Bus.connect(role="admin") as bus:
            return [await wait_event(bus, "c1", "trial", t, "finished.*") for t in ["baseline", *trials]]

    try:
        for name in ("ex-1", "ex-2"):
            cluster.start(name, "executor", "--name", name)
        # Both wait on the queue before the first trial is there, so the work is split between them.
        deadline = time.monotonic() + WAIT_S
        while not all("waiting for trials" in cluster.log(name) for name in ("ex-1", "ex-2")):
            assert time.monotonic() < deadline and not cluster.failed(), cluster.failed()
            time.sleep(0.1)
        asyncio.run(publish())
        runs = asyncio.run(finished())
        assert not cluster.failed()
    finally:
        cluster.stop_all()
    assert {run.executor for run in runs} == {"ex-1", "ex-2"}  # both ran timed trials, on one host
    spans, last_core = [], sorted(os.sched_getaffinity(0))[-1]
    for run in runs:
        # The last line is the recipe's: full <start> <end> [<cores>] <OMP_NUM_THREADS>
        kind, start, end, cores, threads = re.fullmatch(r"(\w+) (\S+) (\S+) \[(.*)\] (\S+)",
                                                        run.log_tail.strip().splitlines()[-1]).groups()
        assert (kind, cores, threads) == ("full", str(last_core), "1"), run.log_tail
        spans.append((float(start), float(end)))
    spans.sort()
    assert all(prev_end <= begin for (_, prev_end), (begin, _) in zip(spans, spans[1:])), spans


def test_arx_noise_measures_the_score_the_campaign_records_and_status_shows(arx_env, tmp_path, monkeypatch):
    cluster = tiny_cluster(arx_env, tmp_path, monkeypatch)
    done = cluster.arx("noise", "--task", "tiny-timed", "--runs", "3", "--json", timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["task"], report["score"], report["prior"], report["failures"]) == ("tiny-timed", "wall_s", 0.05, [])
    assert len(report["scores"]) == 3 and all(0 < s < 10 for s in report["scores"])  # wall seconds of each run
    assert report["stats"]["relative_std"] == pytest.approx(noise_stats(report["scores"]).relative_std)
    assert len(report["load_before"]) == 3 and report["cpus"] >= 1
    assert done.stderr.count("run ") == 3  # progress, one line a run

    done = cluster.arx("campaign", "start", "--task", "tiny-timed", "--campaign", "cn", "--trials", "1",
                       "--measure-noise", "2", timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cn"
    measured = float(re.search(r"noise floor (\S+) \(task prior 0.05\)", done.stderr).group(1))
    summary = cluster.status("cn")
    assert summary["noise"] == pytest.approx(measured, abs=1e-4) and summary["noise"] != 0.05
    table = cluster.arx("status", "--campaign", "cn")
    assert f"noise floor {summary['noise'] * 100:.1f}% (task prior 5.0%)" in table.stdout, table.stdout


def test_a_baseline_that_fails_is_no_noise_floor(arx_env, tmp_path, monkeypatch):
    cluster = tiny_cluster(arx_env, tmp_path, monkeypatch)
    recipe = tmp_path / "tasks" / "tiny_timed" / "recipe" / "train.py"
    recipe.write_text(recipe.read_text().replace("VALUE = 5.0", "VALUE = 1 / 0"))
    done = cluster.arx("noise", "--task", "tiny-timed", "--runs", "2", timeout=WAIT_S)
    assert done.returncode == 1 and done.stdout == ""
    assert "arx noise: 2 of 2 runs gave no score: run 0: crash: ZeroDivisionError" in done.stderr, done.stderr
    done = cluster.arx("campaign", "start", "--task", "tiny-timed", "--measure-noise", "2", timeout=WAIT_S)
    assert done.returncode == 1 and done.stdout == ""
    assert "arx campaign: 2 of 2 runs gave no score" in done.stderr, done.stderr


# What an official task's parse_log would read: here the recipe's own line, full <start> <end> ...
ELAPSED_FROM_LOG = '''

def parse_log(text):
    kind, start, end = text.strip().splitlines()[-1].split()[:3]
    return {"value": float(end) - float(start)}
'''


def log_scored_task(tasks: Path, name: str, *, requires: str = "") -> Path:
    """A tiny task scored from its run's log, as the official adapters are; its recipe sleeps 0.2 s."""
    folder = write_task(tasks, name, noise=0.05)
    toml = folder / "task.toml"
    toml.write_text(f'scored_from = "log"\n{requires}\n' + toml.read_text())
    with open(folder / "task.py", "a") as task_py:
        task_py.write(ELAPSED_FROM_LOG)
    recipe = folder / "recipe" / "train.py"
    recipe.write_text(recipe.read_text().replace("SLEEP = 0.0", "SLEEP = 0.2"))
    return folder


def test_arx_noise_scores_an_official_task_from_its_runs_logs(arx_env, tmp_path, monkeypatch):
    tasks = tmp_path / "tasks"
    log_scored_task(tasks, "tiny-log")
    log_scored_task(tasks, "tiny-gpu", requires='requires = ["cuda"]')
    use_tasks(monkeypatch, tasks)
    cluster = Cluster({**arx_env, "ARX_TASKS_PATH": os.environ["ARX_TASKS_PATH"]}, tmp_path / "logs")

    done = cluster.arx("noise", "--task", "tiny-log", "--runs", "2", "--json", timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # The artifact says 5.0; the log says how long the recipe slept.
    assert report["failures"] == [] and all(0.2 <= s < 5.0 for s in report["scores"]), report

    done = cluster.arx("noise", "--task", "tiny-gpu", "--runs", "2", timeout=WAIT_S)
    assert done.returncode == 1 and done.stdout == ""
    assert "task tiny-gpu runs on cuda devices: measure its noise with --devices auto" in done.stderr, done.stderr


def test_arx_noise_run_by_hand_with_the_default_relative_home(arx_env, tmp_path):
    """No ARX_HOME: the home is `.arx` under the working directory, which the sandbox must find too."""
    env = {key: value for key, value in arx_env.items() if key not in ("ARX_HOME", "NATS_URL")}
    done = subprocess.run([sys.executable, str(ROOT / "arx.py"), "noise", "--task", "tiny", "--runs", "2", "--json"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["scores"] == [5.0, 5.0] and (tmp_path / ".arx").is_dir()
