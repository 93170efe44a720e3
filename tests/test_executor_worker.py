"""The executor process against a real nats-server, real git repos and real recipe runs.

A tiny task folder in tmp (found through ARX_TASKS_PATH) stands in for a real task, so a trial runs
in a fraction of a second; its recipe writes its start and end times into the artifact.
"""

from __future__ import annotations

import difflib
import gzip
import io
import os
import signal
import subprocess
import sys
import tarfile
from functools import partial
from pathlib import Path

import anyio
import msgspec
import pytest

from bus.connection import Bus
from bus.events import MAX_HYPOTHESIS_BYTES, CampaignStarted, CampaignStopped, TrialProposed
from evaluators.spec import Task, load_task
from executors.worker import run_executor
from tiny_tasks import NOT_EVALUATED

TASK_TOML = """
name = "tiny-task"
description = "adds one to the prepared input"
metric = "train_s"
direction = "min"
score = "wall_s"
command = ["{python}", "train.py"]
exclusive_cores = 1
frozen = ["data/"]

[budgets]
train_s = 3
eval_s = 5
memory_mb = 1024
file_mb = 8

[[surfaces]]
name = "optimizer"
paths = ["train.py"]
"""

TASK_PY = """
def prepare(run_dir):
    (run_dir / "data").mkdir(exist_ok=True)
    (run_dir / "data" / "input.txt").write_text("41")
""" + NOT_EVALUATED

TRAIN = """import os
import time
from pathlib import Path

SLEEP = 0.0
STEP = 1

start = time.time()
time.sleep(SLEEP)
value = int(Path("data/input.txt").read_text()) + STEP
out = Path(os.environ["ARX_ARTIFACT_DIR"])
out.mkdir(parents=True, exist_ok=True)
(out / "result.txt").write_text(f"{value} {start} {time.time()}")
print("trained", value)
"""


FROZEN_EDIT = "--- a/data/input.txt\n+++ b/data/input.txt\n@@ -1 +1 @@\n-41\n+99\n"


def edit(old: str, new: str) -> str:
    after = TRAIN.replace(old, new)
    return "".join(difflib.unified_diff(TRAIN.splitlines(True), after.splitlines(True), "a/train.py", "b/train.py"))


@pytest.fixture
def tiny_task(arx_env, tmp_path, monkeypatch) -> Task:
    folder = tmp_path / "tasks" / "tiny_task"
    (folder / "recipe").mkdir(parents=True)
    (folder / "task.toml").write_text(TASK_TOML)
    (folder / "task.py").write_text(TASK_PY)
    (folder / "recipe" / "train.py").write_text(TRAIN)
    monkeypatch.setenv("ARX_TASKS_PATH", str(tmp_path / "tasks"))
    return load_task("tiny-task")


def proposal(campaign: str, trial_id: str, diff: str, parent: str | None = "baseline", surface="optimizer"):
    return TrialProposed(
        event_id=f"{campaign}-{trial_id}-proposed",
        campaign_id=campaign,
        trial_id=trial_id,
        specialist="tester",
        surface=surface,
        parent_id=parent,
        hypothesis=f"{trial_id} hypothesis",
        diff=diff,
    )


async def open_campaign(bus: Bus, task: Task, campaign: str) -> None:
    bundle = await bus.put_object(f"bundles/{campaign}.tar.gz", task.bundle())
    await bus.publish(
        CampaignStarted(
            event_id=f"{campaign}-started",
            campaign_id=campaign,
            task=task.name,
            metric="train_s",
            direction="min",
            max_trials=10,
            bundle=bundle,
        )
    )
    await bus.publish(proposal(campaign, "baseline", "", parent=None, surface="baseline"))


async def wait_event(bus: Bus, campaign: str, trial: str, verb: str, timeout: float = 30.0):
    with anyio.fail_after(timeout):
        while (event := await bus.last_event(f"arx.ev.{campaign}.trial.{trial}.{verb}")) is None:
            await anyio.sleep(0.1)
    return event


async def artifact_files(bus: Bus, ref) -> dict[str, str]:
    data = gzip.decompress(await bus.get_object(ref))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


@pytest.mark.anyio
async def test_trials_run_and_report_what_was_measured(arx_env, tiny_task):
    async with await Bus.connect(role="admin") as bus:
        await open_campaign(bus, tiny_task, "c1")
        await bus.publish(proposal("c1", "t-step", edit("STEP = 1", "STEP = 2")))
        await bus.publish(proposal("c1", "t-hang", edit("SLEEP = 0.0", "SLEEP = 60.0")))
        await bus.publish(proposal("c1", "t-frozen", FROZEN_EDIT))
        stale = edit("STEP = 1", "STEP = 3").replace("-STEP = 1", "-STEP = 2")  # made for another tree
        await bus.publish(proposal("c1", "t-stale", stale))
        await bus.publish(proposal("c1", "t-surface", edit("STEP = 1", "STEP = 2"), surface="architecture"))
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_executor, bus, name="ex-1", stop=stop))
            base = await wait_event(bus, "c1", "baseline", "finished.*")
            step = await wait_event(bus, "c1", "t-step", "finished.*")
            hang = await wait_event(bus, "c1", "t-hang", "finished.*")
            rejected = {t: await wait_event(bus, "c1", t, "outcome") for t in ("t-frozen", "t-stale", "t-surface")}
            started = await wait_event(bus, "c1", "baseline", "started.*")
            stop.set()

        assert (started.executor, started.attempt) == ("ex-1", 1)
        assert (base.exit_code, base.signal, base.timed_out) == (0, None, False)
        assert base.limits == {"train_s": 3, "memory_mb": 1024, "file_mb": 8, "disk_mb": 512}
        assert base.log_tail == "trained 42\n"
        assert (await bus.get_object(base.log)).decode() == "trained 42\n"
        assert base.log.name == "logs/c1/baseline-1.log"
        assert base.artifact.name == "artifacts/c1/baseline-1.tar.gz"
        assert (await artifact_files(bus, base.artifact))["result.txt"].startswith("42 ")
        assert (await artifact_files(bus, step.artifact))["result.txt"].startswith("43 ")
        assert len(base.commit) == 40 and step.commit != base.commit
        assert 0 < base.wall_s < 3 and base.peak_rss_mb > 1

        assert hang.timed_out and hang.exit_code is None and hang.artifact is None
        assert 3 <= hang.wall_s < 10

        for trial, outcome in rejected.items():
            assert type(outcome).__name__ == "TrialRejected", trial
            assert (outcome.label, outcome.evidence.stage) == ("invalid_edit", "apply")
        assert "data/input.txt" in rejected["t-frozen"].evidence.message
        assert "frozen" in rejected["t-frozen"].evidence.message
        assert "train.py" in rejected["t-stale"].evidence.message
        assert "does not apply" in rejected["t-stale"].evidence.message
        assert "architecture" in rejected["t-surface"].evidence.message
        assert list((Path(arx_env["ARX_HOME"]) / "runs" / "c1").iterdir()) == []


KEEPER = TRAIN + """Path("model.bin").write_bytes(b"weights" * 128)
Path("logs/run-1").mkdir(parents=True)
Path("logs/run-1/run.pt").write_text("accs")
"""


@pytest.mark.anyio
async def test_a_tasks_declared_artifacts_are_stored_from_the_run_dir(arx_env, tmp_path, monkeypatch):
    folder = tmp_path / "tasks" / "tiny_keeper"
    (folder / "recipe").mkdir(parents=True)
    toml = TASK_TOML.replace('name = "tiny-task"', 'name = "tiny-keeper"')
    artifacts = 'artifacts = ["*.bin", "logs/*/run.pt", "final.ptz"]'
    (folder / "task.toml").write_text(toml.replace('frozen = ["data/"]', f'frozen = ["data/"]\n{artifacts}'))
    (folder / "task.py").write_text(TASK_PY)
    (folder / "recipe" / "train.py").write_text(KEEPER)
    monkeypatch.setenv("ARX_TASKS_PATH", str(tmp_path / "tasks"))
    task = load_task("tiny-keeper")
    broken = "".join(difflib.unified_diff(KEEPER.splitlines(True), ("raise SystemExit(3)\n" + KEEPER).splitlines(True),
                                          "a/train.py", "b/train.py"))
    async with await Bus.connect(role="admin") as bus:
        await open_campaign(bus, task, "k1")
        await bus.publish(proposal("k1", "t-broken", broken))
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_executor, bus, name="ex-1", stop=stop))
            base = await wait_event(bus, "k1", "baseline", "finished.*")
            crashed = await wait_event(bus, "k1", "t-broken", "finished.*")
            stop.set()
        # The run dir's product, under its own names; not what ARX_ARTIFACT_DIR holds, not the linked data.
        files = await artifact_files(bus, base.artifact) if base.artifact else {}
        assert sorted(files) == ["logs/run-1/run.pt", "model.bin"], files
        assert files["logs/run-1/run.pt"] == "accs" and base.artifact.size > 0
        assert crashed.exit_code == 3 and crashed.artifact is None


@pytest.mark.anyio
async def test_bad_messages_stopped_campaigns_and_exhausted_attempts(arx_env, tiny_task, monkeypatch):
    monkeypatch.setenv("ARX_MAX_ATTEMPTS", "1")
    async with await Bus.connect(role="admin") as bus:
        await open_campaign(bus, tiny_task, "c1")
        await bus.js.publish("arx.ev.c1.trial.junk.proposed", b"not json")
        await bus.js.publish("arx.ev.c1.trial.new.proposed", b'{"type": "TrialFromTheFuture"}')
        # An executor that takes the baseline and dies before finishing it.
        dead = await bus.durable("executors", "arx.ev.*.trial.*.proposed")
        (taken,) = await dead.fetch(1, timeout=5)
        await taken.nak()

        await open_campaign(bus, tiny_task, "c2")
        await bus.publish(CampaignStopped(event_id="c2-stopped", campaign_id="c2", reason="enough"))
        await open_campaign(bus, tiny_task, "c3")

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_executor, bus, name="ex-1", stop=stop))
            gave_up = await wait_event(bus, "c1", "baseline", "outcome")
            stopped = await wait_event(bus, "c2", "baseline", "outcome")
            finished = await wait_event(bus, "c3", "baseline", "finished.*")
            stop.set()

        assert (type(gave_up).__name__, gave_up.label) == ("TrialAbandoned", "harness_abort")
        assert "gave up after 1 attempts" in gave_up.evidence.message
        assert await bus.last_event("arx.ev.c1.trial.baseline.started.*") is None  # the last delivery never runs
        assert (type(stopped).__name__, stopped.label, stopped.evidence.stage) == (
            "TrialAbandoned",
            "harness_abort",
            "campaign_stopped",
        )
        assert "enough" in stopped.evidence.message
        assert finished.exit_code == 0
        info = await dead.consumer_info()
        assert (info.num_pending, info.num_ack_pending) == (0, 0)  # the junk was acked, not left to redeliver


@pytest.mark.anyio
async def test_long_trials_keep_their_delivery_and_never_overlap_on_one_host(arx_env, tiny_task, monkeypatch):
    # ack_wait 1 s is shorter than each trial: only the heartbeat keeps NATS from redelivering it.
    monkeypatch.setenv("ARX_ACK_WAIT_S", "1")
    async with await Bus.connect(role="admin") as bus:
        await open_campaign(bus, tiny_task, "c1")
        for trial in ("t-a", "t-b"):
            await bus.publish(proposal("c1", trial, edit("SLEEP = 0.0", "SLEEP = 1.5")))
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            for name in ("ex-1", "ex-2"):
                tg.start_soon(partial(run_executor, bus, name=name, stop=stop))
            finished = [await wait_event(bus, "c1", t, "finished.*") for t in ("baseline", "t-a", "t-b")]
            stop.set()

        for event in finished:
            started = await bus.last_event(f"arx.ev.c1.trial.{event.trial_id}.started.*")
            assert (started.attempt, event.attempt) == (1, 1), event.trial_id
        assert {e.executor for e in finished[1:]} == {"ex-1", "ex-2"}
        spans = []
        for event in finished:
            _, begin, end = (await artifact_files(bus, event.artifact))["result.txt"].split()
            spans.append((float(begin), float(end)))
        spans.sort()
        assert all(prev_end <= begin for (_, prev_end), (begin, _) in zip(spans, spans[1:])), spans


@pytest.mark.anyio
async def test_the_executor_process_runs_trials_and_stops_cleanly_on_sigterm(arx_env, tiny_task, tmp_path):
    env = {**arx_env, "ARX_TASKS_PATH": os.environ["ARX_TASKS_PATH"]}
    code = "import argparse, sys; from executors.worker import cli; sys.exit(cli(argparse.Namespace(name='proc-ex')))"
    with open(tmp_path / "executor.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with await Bus.connect(role="admin") as bus:
            await open_campaign(bus, tiny_task, "c1")
            finished = await wait_event(bus, "c1", "baseline", "finished.*")
        assert (finished.executor, finished.exit_code) == ("proc-ex", 0)
        proc.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(partial(proc.wait, timeout=15)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in (tmp_path / "executor.log").read_text()


@pytest.mark.anyio
async def test_a_proposal_over_a_size_limit_is_an_invalid_edit(arx_env, tiny_task):
    # A client other than our agents, which refuse to publish such a proposal.
    long = msgspec.structs.replace(proposal("c1", "t-long", edit("STEP = 1", "STEP = 2")),
                                   hypothesis="x" * (MAX_HYPOTHESIS_BYTES + 1))
    async with await Bus.connect(role="admin") as bus:
        await open_campaign(bus, tiny_task, "c1")
        await bus.publish(long)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_executor, bus, name="ex-1", stop=stop))
            outcome = await wait_event(bus, "c1", "t-long", "outcome")
            stop.set()
    assert (type(outcome).__name__, outcome.label, outcome.evidence.stage) == ("TrialRejected", "invalid_edit", "apply")
    assert outcome.evidence.message == (
        f"the hypothesis is {MAX_HYPOTHESIS_BYTES + 1} bytes, over its limit of {MAX_HYPOTHESIS_BYTES} bytes"
    )


FILL_THE_DISK = """print("filling the disk", flush=True)
for n in range(100):
    Path(f"fill-{n}").write_bytes(b"x" * 262144)"""


def fill(disk: Path) -> None:
    """Write into disk until it is full, as another tenant of the host would."""
    with open(disk / "ballast", "wb", buffering=0) as out:
        while True:
            try:
                out.write(b"x" * 65536)
            except OSError:
                return


@pytest.mark.anyio
async def test_a_full_host_disk_is_a_harness_abort_with_the_hosts_reason(arx_env, tiny_task, small_disk):
    (Path(arx_env["ARX_HOME"]) / "runs").symlink_to(small_disk)  # run dirs and logs live on a 2 MiB disk
    async with await Bus.connect(role="admin") as bus:
        await open_campaign(bus, tiny_task, "c1")
        await bus.publish(proposal("c1", "t-fill", edit('print("trained", value)', FILL_THE_DISK)))
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_executor, bus, name="ex-1", stop=stop))
            filled = await wait_event(bus, "c1", "t-fill", "outcome")
            fill(small_disk)  # now the executor cannot even write the next trial's run dir
            await bus.publish(proposal("c1", "t-after", edit("STEP = 1", "STEP = 2")))
            after = await wait_event(bus, "c1", "t-after", "outcome")
            stop.set()

    for outcome in (filled, after):
        assert (type(outcome).__name__, outcome.label, outcome.evidence.stage) == (
            "TrialAbandoned", "harness_abort", "execute")
    assert filled.evidence.message.startswith(f"host fault: the disk under {small_disk.resolve()}/c1/t-fill-1 is full")
    assert filled.evidence.message.endswith("the run failed with No space left on device")
    assert after.evidence.message.startswith("host fault (ENOSPC) in the executor: [Errno 28] No space left on device")
