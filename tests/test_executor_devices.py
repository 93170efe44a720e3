"""Executors advertise their devices and take only the trials their devices can run: against a real
nats-server, with a task that requires cuda but whose command runs on any host (no GPU is needed to
see which executor takes it, what it may see and how the command is filled in)."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from functools import partial

import anyio
import pytest

from bus.connection import Bus
from evaluators.campaign import start_campaign
from evaluators.spec import load_task
from executors.devices import CPU, CUDA, Devices, detect_devices, device_class, parse_devices
from executors.worker import queue_name, run_executor
from tiny_tasks import NOT_EVALUATED

TASK_TOML = """
name = "{name}"
description = "writes what it was given"
metric = "train_s"
direction = "min"
score = "wall_s"
command = ["{{python}}", "train.py", "{{devices}}"]
{requires}

[budgets]
train_s = 10
eval_s = 5
memory_mb = {memory_mb}
file_mb = 8

[[surfaces]]
name = "main"
paths = ["train.py"]
"""

TRAIN = """import os, sys
from pathlib import Path
out = Path(os.environ["ARX_ARTIFACT_DIR"])
out.mkdir()
(out / "seen.txt").write_text(f"{os.environ.get('CUDA_VISIBLE_DEVICES')} {sys.argv[1]}")
"""


@pytest.fixture
def tasks(arx_env, tmp_path, monkeypatch):
    for name, requires, memory_mb in (("cpu-task", "", 1024), ("gpu-task", 'requires = ["cuda"]', 0)):
        folder = tmp_path / "tasks" / name.replace("-", "_")
        (folder / "recipe").mkdir(parents=True)
        (folder / "task.toml").write_text(TASK_TOML.format(name=name, requires=requires, memory_mb=memory_mb))
        (folder / "task.py").write_text("def prepare(run_dir):\n    pass\n" + NOT_EVALUATED)
        (folder / "recipe" / "train.py").write_text(TRAIN)
    monkeypatch.setenv("ARX_TASKS_PATH", str(tmp_path / "tasks"))
    return {name: load_task(name) for name in ("cpu-task", "gpu-task")}


async def wait_event(bus: Bus, subject: str, timeout: float = 30.0):
    with anyio.fail_after(timeout):
        while (event := await bus.last_event(subject)) is None:
            await anyio.sleep(0.1)
    return event


async def seen(bus: Bus, finished) -> str:
    data = gzip.decompress(await bus.get_object(finished.artifact))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile("seen.txt").read().decode()


async def settled(bus: Bus, queue: str) -> None:
    """Wait until the queue's executors have acked everything delivered to them."""
    with anyio.fail_after(30):
        while True:
            info = await bus.js.consumer_info(bus.settings.stream, queue)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await anyio.sleep(0.1)


@pytest.mark.anyio
async def test_a_cpu_executor_never_takes_a_cuda_trial_and_a_cuda_executor_takes_only_those(arx_env, tasks):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, tasks["cpu-task"], campaign_id="cpu", trials=3)
        await start_campaign(bus, tasks["gpu-task"], campaign_id="gpu", trials=3)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_executor, bus, name="cpu-ex", stop=stop))
            cpu_run = await wait_event(bus, "arx.ev.cpu.trial.baseline.finished.*")
            await settled(bus, queue_name(CPU))
            stop.set()
        assert await bus.last_event("arx.ev.gpu.trial.baseline.started.*") is None  # passed on, not taken
        assert await seen(bus, cpu_run) == "None 0"

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_executor, bus, name="gpu-ex", stop=stop, devices=Devices(CUDA, ("2", "3"))))
            gpu_run = await wait_event(bus, "arx.ev.gpu.trial.baseline.finished.*")
            await settled(bus, queue_name(CUDA))
            stop.set()
        started = await bus.last_event("arx.ev.gpu.trial.baseline.started.*")
        assert (started.executor, started.devices) == ("gpu-ex", ["cuda:2", "cuda:3"])
        assert await seen(bus, gpu_run) == "2,3 2"  # only its own GPUs, and {devices} is their count
        assert gpu_run.limits["memory_mb"] == 0 and gpu_run.exit_code == 0
        # The cuda executor passed the cpu trial on: it ran once, on the cpu executor.
        assert (await bus.last_event("arx.ev.cpu.trial.baseline.started.*")).executor == "cpu-ex"
        queues = {info.name for info in await bus.js.consumers_info(bus.settings.stream)}
        assert {"executors", "executors-cuda"} <= queues  # one queue per device class


def test_device_classes_and_the_devices_flag():
    assert (device_class([]), device_class(["cuda"])) == (CPU, CUDA)
    assert parse_devices("cpu") == Devices()
    assert parse_devices("cuda:0, cuda:3") == Devices(CUDA, ("0", "3"))
    assert Devices(CUDA, ("0", "3")).names == ["cuda:0", "cuda:3"]
    for bad in ("gpu0", "cuda:x", "cuda:1,cuda:1"):
        with pytest.raises(ValueError, match="--devices"):
            parse_devices(bad)


def test_a_cuda_trial_sees_only_its_gpus_and_the_hosts_cuda_settings(monkeypatch):
    monkeypatch.setenv("NCCL_IB_DISABLE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "secret")
    env = Devices(CUDA, ("1",)).env()
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["NCCL_IB_DISABLE"] == "1"
    assert "OPENAI_API_KEY" not in env and Devices().env() == {}


def test_autodetect_reads_cuda_visible_devices_then_nvidia_smi(tmp_path):
    assert detect_devices({"CUDA_VISIBLE_DEVICES": "4,5"}) == Devices(CUDA, ("4", "5"))
    assert detect_devices({"CUDA_VISIBLE_DEVICES": ""}) == Devices()
    assert detect_devices({"PATH": str(tmp_path)}) == Devices()  # no nvidia-smi: CPUs only
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    assert detect_devices({"PATH": f"{tmp_path}{os.pathsep}/usr/bin:/bin"}) == Devices(CUDA, ("0", "1"))
