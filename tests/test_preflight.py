"""The preflight: an edited recipe's syntax, a smoke run and a size projection, checked before its full run
so that a broken or oversized trial is labelled preflight_crash or size_blocked early."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from tiny_tasks import WAIT_S, edit, proposal, use_tasks, wait_event, write_task

from bus.connection import Bus
from bus.events import PREFLIGHT_STAGE, TrialFinished
from evaluators import labels
from evaluators.campaign import start_campaign
from evaluators.spec import Task, load_task
from evaluators.worker import run_evaluator
from executors import preflight
from executors.worker import run_executor

PREFLIGHT = """
[preflight]
budget_s = 1.5

[[gates]]
metric = "total_bytes"
op = "<="
limit = 1000
label = "size_blocked"
"""

SYNTAX_ERROR = '  File "train.py", line 5\n    VALUE = (5.0\n            ^\nSyntaxError: \'(\' was never closed\n'


@pytest.fixture
def task(tmp_path, monkeypatch) -> Task:
    write_task(tmp_path / "tasks", "tiny-preflight", extra=PREFLIGHT)
    use_tasks(monkeypatch, tmp_path / "tasks")
    return load_task("tiny-preflight")


def test_the_files_to_compile_and_the_size_cap_with_its_slack(task, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.py").write_text("")
    diff = edit("VALUE = 5.0", "VALUE = 4.0") + "--- a/gone.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x = 1\n"
    assert preflight.changed_python_files(diff, tmp_path / "run") == ["train.py"]
    assert preflight.changed_python_files("--- a/notes.txt\n+++ b/notes.txt\n@@ -1 +1 @@\n-a\n+b\n",
                                          tmp_path / "run") == []
    assert [g.metric for g in preflight.size_gates(task.spec)] == ["total_bytes"]
    assert not preflight.over_cap(task.spec, {"total_bytes": 1019.0})  # within the 2% a smoke run may be off
    assert preflight.over_cap(task.spec, {"total_bytes": 1021.0})
    assert not preflight.over_cap(task.spec, {})


def stopped(**fields) -> TrialFinished:
    return TrialFinished(event_id="f", campaign_id="c", trial_id="t", executor="x", stage=PREFLIGHT_STAGE, **fields)


def test_labels_of_a_trial_the_preflight_stopped(task):
    crash = labels.label(stopped(exit_code=1, log_tail=SYNTAX_ERROR), task.spec, None, None, 0.0)
    assert (crash.label, crash.score, crash.evidence.stage, crash.evidence.frame) == (
        "preflight_crash", None, "preflight", "train.py:5")
    assert crash.evidence.message == "SyntaxError: '(' was never closed"

    big = labels.label(stopped(exit_code=0, measured={"weights_bytes": 5000.0, "total_bytes": 5000.0}), task.spec,
                       None, None, 0.0)
    assert (big.label, big.evidence.stage, big.evidence.gate, big.evidence.measured, big.evidence.limit) == (
        "size_blocked", "preflight", "total_bytes", 5000.0, 1000.0)
    assert [(g.gate, g.passed) for g in big.gates] == [("total_bytes", False)]
    assert not labels.scorable(stopped(exit_code=0))
    with pytest.raises(ValueError, match="pass every gate"):  # executor and evaluator disagree: the harness's fault
        labels.label(stopped(exit_code=0, measured={"total_bytes": 10.0}), task.spec, None, None, 0.0)


@pytest.mark.anyio
async def test_the_preflight_stops_broken_and_oversized_edits_before_their_full_run(arx_env, task):
    trials = {  # trial: (edit, expected label)
        "syntax": (edit("VALUE = 5.0", "VALUE = (5.0"), "preflight_crash"),
        "boom": (edit('smoke = bool(os.environ.get("ARX_SMOKE"))', "smoke = 1 / 0"), "preflight_crash"),
        "fat": (edit("WEIGHTS = 100", "WEIGHTS = 5000"), "size_blocked"),
        "slim": (edit("VALUE = 5.0", "VALUE = 4.0"), "keep"),
        # A smoke run past its budget proves nothing: the full run goes ahead.
        "slow-smoke": (edit("SLEEP = 0.0", 'SLEEP = 5.0 if os.environ.get("ARX_SMOKE") else 0.0'), "discard"),
    }
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, task, campaign_id="c1", trials=10)
        stop = asyncio.Event()
        roles = [asyncio.create_task(run_executor(bus, name="ex", stop=stop)),
                 asyncio.create_task(run_evaluator(bus, name="ev", stop=stop))]
        try:
            await wait_event(bus, "c1", "trial", "baseline", "outcome")
            for trial, (diff, _) in trials.items():
                await bus.publish(proposal("c1", trial, diff))
                await wait_event(bus, "c1", "trial", trial, "outcome")  # one at a time: "slim" is the incumbent
            outcomes = {t: await bus.last_event(f"arx.ev.c1.trial.{t}.outcome") for t in trials}
            finished = {t: await bus.last_event(f"arx.ev.c1.trial.{t}.finished.*") for t in trials}
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*roles), WAIT_S)

    assert {t: o.label for t, o in outcomes.items()} == {t: label for t, (_, label) in trials.items()}
    for trial in ("syntax", "boom", "fat"):
        assert (finished[trial].stage, finished[trial].artifact) == (PREFLIGHT_STAGE, None), trial
        assert outcomes[trial].evidence.stage == "preflight"
        assert "full" not in finished[trial].log_tail  # the full run never started
    assert outcomes["syntax"].evidence.frame == "train.py:5"
    assert "SyntaxError" in outcomes["syntax"].evidence.message
    assert finished["syntax"].limits["train_s"] == preflight.SYNTAX_BUDGET_S
    assert (outcomes["boom"].evidence.frame, outcomes["boom"].evidence.message) == (
        "train.py:9 in <module>", "ZeroDivisionError: division by zero")
    assert finished["boom"].limits["train_s"] == 1.5  # the smoke run's budget
    fat = outcomes["fat"]
    assert (fat.evidence.gate, fat.evidence.measured, fat.evidence.limit) == ("total_bytes", 5000.0, 1000.0)
    assert finished["fat"].measured == {"weights_bytes": 5000.0, "total_bytes": 5000.0}
    assert finished["fat"].log_tail.startswith("smoke ")
    for trial in ("slim", "slow-smoke"):
        assert finished[trial].stage == "" and finished[trial].log_tail.startswith("full "), trial
    assert outcomes["slim"].score == 4.0 and outcomes["slow-smoke"].score == 5.0


def test_preflight_settings_are_checked_at_load(tmp_path):
    write_task(tmp_path, "bad-preflight", extra="\n[preflight]\nbudget_s = 0\n")
    with pytest.raises(ValueError, match="preflight.budget_s must be positive"):
        Task(tmp_path / "bad_preflight")
    write_task(tmp_path, "typo-preflight", extra="\n[preflight]\nbudget = 3\n")
    with pytest.raises(ValueError, match="budget"):
        Task(tmp_path / "typo_preflight")
    assert msgspec.structs.asdict(Task(Path(__file__).parent / "tasks" / "tiny").spec)["preflight"] is None
