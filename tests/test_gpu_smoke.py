"""scripts/gpu_smoke.sh without a GPU: its probe edits, and the whole run on a CPU task that has a
[short] table, through scripts/up.sh and scripts/down.sh. On a GPU host the same run checks the
official recipes (README, "Real tasks on GPUs")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_tasks import TRAIN, use_tasks, write_task

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from gpu_smoke import BROKEN, broken, entry_file, missing_modules, recipe_python, unchanged  # noqa: E402

from evaluators.spec import load_task  # noqa: E402


@pytest.mark.parametrize(("task", "entry"), [
    ("parameter-golf", "train_gpt.py"), ("nanochat-d12", "scripts/base_train.py"),
    ("airbench96", "airbench96_faster.py"),
])
def test_the_probes_edit_the_file_the_command_runs(task, entry):
    spec = load_task(task).spec
    assert entry_file(spec.shortened().command) == entry
    assert any(entry in surface.paths for surface in spec.surfaces)


SOURCE = '''"""A recipe."""
from __future__ import annotations

import sys


@staticmethod
def step():
    return 1
'''


def test_the_broken_edit_raises_first_and_the_unchanged_one_runs_as_before(tmp_path):
    text, line = broken(SOURCE)
    assert line == 4 and text.splitlines()[3] == f"raise RuntimeError({BROKEN!r})"
    path = tmp_path / "recipe.py"
    path.write_text(text)
    run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=30)
    assert f'recipe.py", line {line}, in <module>' in run.stderr and BROKEN in run.stderr
    path.write_text(unchanged(SOURCE))
    assert subprocess.run([sys.executable, str(path)], timeout=30).returncode == 0


def test_a_module_the_recipe_imports_that_its_python_lacks_is_named_before_any_run(tmp_path, monkeypatch):
    tasks = tmp_path / "tasks"
    folder = write_task(tasks, "needy")
    lazy = ("def load():\n    import arx_no_such_module\n"
            "try:\n    import arx_optional_extra\nexcept ImportError:\n    pass\n")
    (folder / "recipe" / "train.py").write_text("import numpy\nimport json\n" + lazy + TRAIN + "import helpers\n")
    (folder / "recipe" / "helpers.py").write_text("import torch\n")
    use_tasks(monkeypatch, tasks)
    spec = load_task("needy").spec
    assert missing_modules("needy", spec) == ["arx_no_such_module"]
    # The recipe's Python is the one its command runs: torchrun's is the interpreter of its script.
    assert recipe_python(["{python}", "train.py"]) == sys.executable
    torchrun = str(Path(sys.executable).parent / "torchrun")
    assert Path(recipe_python([torchrun])).resolve() == Path(sys.executable).resolve()


# A recipe whose short run sleeps SLEEP_S, a setting it reads, so that half its wall time kills it mid-run.
SLEEPY = TRAIN.replace("time.sleep(SLEEP)", 'time.sleep(float(os.environ.get("SLEEP_S", SLEEP)))')
SHORT = '[short]\nenv = { SLEEP_S = "3" }\ntrain_s = 30\n'


def test_the_smoke_run_on_a_cpu_task_twice_on_one_home(tmp_path):
    tasks = tmp_path / "tasks"
    folder = write_task(tasks, "sleepy", extra=SHORT)
    (folder / "recipe" / "train.py").write_text(SLEEPY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARX_", "NATS_"))} | {"ARX_TASKS_PATH": str(tasks)}
    out = tmp_path / "out"
    # The second time: the same ARX_HOME and log, so new campaigns beside the first run's stopped ones.
    for attempt in ("first", "second"):
        run = subprocess.run([str(ROOT / "scripts" / "gpu_smoke.sh"), "--task", "sleepy", "--devices", "cpu", "--out",
                              str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        report = json.loads((out / "report.json").read_text())
        assert run.returncode == 0, attempt + run.stdout[-3000:] + run.stderr[-3000:]
        check_report(report)
        # down.sh stopped everything the run started.
        pids = list((out / "home" / "pids").glob("*.pid"))
        assert pids == [], pids


def check_report(report: dict) -> None:
    (task,) = report["tasks"]
    checks = {c["check"]: c for c in task["checks"]}
    assert all(c["ok"] for c in checks.values()) and len(checks) == 7, checks
    assert checks["GPU memory is freed after a killed trial"]["detail"] == "skipped: no nvidia-smi on this host"
    trials = {t["hypothesis"]: t for t in task["trials"]}
    assert {t["outcomes"] for t in trials.values()} == {1} and len(trials) == 3
    # The numbers BENCHMARKS.md takes: the runs' wall times (3 s of sleep), logs, queueing and overhead.
    for trial in (trials["The starting recipe, measured as the first incumbent."], trials["smoke probe unchanged"]):
        assert trial["wall_s"] >= 3 and trial["log_bytes"] > 0 and trial["artifact_bytes"] > 0
        assert trial["overhead_s"] >= 0 and trial["queue_s"] >= 0
    overrun = task["overrun"]
    assert overrun["label"] == "train_budget_overrun" and overrun["train_s"] >= 1.5 and overrun["timed_out"]


@pytest.mark.parametrize(("script", "message"), [
    ("up.sh", "up.sh: --devices takes cpu, auto or a list like cuda:0,cuda:1"),
    ("gpu_smoke.sh", "--devices: 'gpu0' is not cuda:N"),
])
def test_devices_that_name_no_device_are_refused_before_anything_starts(tmp_path, script, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARX_", "NATS_"))} | {"ARX_HOME": str(tmp_path)}
    run = subprocess.run([str(ROOT / "scripts" / script), "--devices", "gpu0"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert list(tmp_path.iterdir()) == []  # no server, no campaign
