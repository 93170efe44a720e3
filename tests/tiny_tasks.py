"""Tiny task folders written into a test's tmp dir (found through ARX_TASKS_PATH), and waits on the log.

Their recipes start in a fraction of a second and need no torch: the artifact holds the score itself.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import anyio

from bus.connection import Bus
from bus.events import TrialProposed, decode

WAIT_S = 60.0

# The evaluator's half of a task.py (evaluators/contract.py), for tasks whose tests only run executors.
NOT_EVALUATED = """
def heldout():
    raise NotImplementedError("an executor-only test task")


def predict(artifact_dir, inputs):
    raise NotImplementedError("an executor-only test task")


def metrics(outputs, targets):
    raise NotImplementedError("an executor-only test task")
"""

TASK_PY = '''
from pathlib import Path

import numpy as np


def prepare(run_dir):
    (run_dir / "data").mkdir(exist_ok=True)
    (run_dir / "data" / "seed.txt").write_text("1\\n")


def heldout():
    return {"unused": np.zeros(1)}, np.zeros(1)


def predict(artifact_dir, inputs):
    artifact_dir = Path(artifact_dir)
    return {"value": np.array([float((artifact_dir / "value.txt").read_text())]),
            "weights_bytes": np.array([(artifact_dir / "weights.bin").stat().st_size])}


def metrics(outputs, targets):
    return {"value": float(outputs["value"][0]), "total_bytes": float(outputs["weights_bytes"][0])}


def artifact_size(artifact_dir):
    return {"weights_bytes": (Path(artifact_dir) / "weights.bin").stat().st_size}
'''

# Prints what the executor's sandbox gave it, so tests can read the pinning and the timing from the log.
TRAIN = '''import os
import time
from pathlib import Path

VALUE = 5.0
SLEEP = 0.0
WEIGHTS = 100

smoke = bool(os.environ.get("ARX_SMOKE"))
start = time.time()
time.sleep(SLEEP)
out = Path(os.environ.get("ARX_ARTIFACT_DIR", "artifact"))
out.mkdir(parents=True, exist_ok=True)
(out / "value.txt").write_text(f"{VALUE}\\n")
(out / "weights.bin").write_bytes(bytes(WEIGHTS))
cores = sorted(os.sched_getaffinity(0))
print("smoke" if smoke else "full", start, time.time(), cores, os.environ.get("OMP_NUM_THREADS"))
'''

TASK_TOML = '''name = "{name}"
description = "Lower VALUE in train.py."
metric = "value"
direction = "min"
score = "{score}"
command = ["{{python}}", "train.py"]
noise = {noise}
exclusive_cores = {exclusive_cores}
frozen = ["data/"]

[budgets]
train_s = 10
eval_s = 10
memory_mb = 1024
file_mb = 8
{extra}
[[surfaces]]
name = "main"
paths = ["train.py"]
'''


def write_task(tasks_dir: Path, name: str, *, score: str = "value", noise: float = 0.0, exclusive_cores: int = 0,
               extra: str = "") -> Path:
    """A task folder `tasks_dir/<name>` with TRAIN as its recipe; `extra` is TOML added after [budgets]."""
    folder = tasks_dir / name.replace("-", "_")
    (folder / "recipe").mkdir(parents=True)
    (folder / "task.toml").write_text(TASK_TOML.format(
        name=name, score=score, noise=noise, exclusive_cores=exclusive_cores, extra=extra))
    (folder / "task.py").write_text(TASK_PY)
    (folder / "recipe" / "train.py").write_text(TRAIN)
    return folder


def use_tasks(monkeypatch, tasks_dir: Path) -> None:
    monkeypatch.setenv("ARX_TASKS_PATH", os.pathsep.join([str(tasks_dir), os.environ.get("ARX_TASKS_PATH", "")]))


def edit(old: str, new: str, source: str = TRAIN) -> str:
    """A unified diff of train.py replacing old by new."""
    assert source.count(old) == 1, old
    after = source.replace(old, new)
    return "".join(difflib.unified_diff(source.splitlines(True), after.splitlines(True), "a/train.py", "b/train.py"))


def proposal(campaign: str, trial: str, diff: str, parent: str = "baseline") -> TrialProposed:
    return TrialProposed(event_id=f"{campaign}-{trial}-proposed", campaign_id=campaign, trial_id=trial,
                         specialist="tester", surface="main", parent_id=parent, hypothesis=f"{trial}", diff=diff)


async def wait_event(bus: Bus, campaign: str, aggregate: str, ident: str, verb: str, timeout: float = WAIT_S):
    with anyio.fail_after(timeout):
        while (event := await bus.last_event(f"arx.ev.{campaign}.{aggregate}.{ident}.{verb}")) is None:
            await anyio.sleep(0.1)
    return event


async def stored(bus: Bus, campaign: str) -> list:
    events = []
    async for batch in bus.read(subject=f"arx.ev.{campaign}.>"):
        events += [decode(m.data) for m in batch]
    return events
