"""The sandbox against real child processes: exit codes, timeouts, limits and the environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluators.labels import crash_evidence
from executors import sandbox
from executors.sandbox import Limits, run_command

LIMITS = Limits(wall_s=20, memory_mb=1024, file_mb=1)


def run_python(tmp_path: Path, code: str, limits: Limits = LIMITS, **kwargs):
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "recipe.py").write_text(code)
    return run_command(["{python}", "recipe.py"], run_dir, limits, log_path=tmp_path / "run.log", **kwargs)


def running_in(folder: Path) -> list[int]:
    """Host pids of live (not zombie) processes whose working directory is folder: a recipe's pids
    inside its pid namespace mean nothing out here."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd") == str(folder.resolve()):
                if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(proc.name))
        except OSError:  # gone while we looked, or not ours to read
            continue
    return pids


def test_exit_code_and_log_of_a_crash(tmp_path):
    result = run_python(tmp_path, "print('step 1')\nraise SystemExit(3)\n")
    assert (result.exit_code, result.signal, result.timed_out) == (3, None, False)
    assert result.log.read_text() == "step 1\n"
    assert result.wall_s > 0 and result.peak_rss_mb > 1

    result = run_python(tmp_path, "def deep():\n    1 / 0\ndeep()\n")
    assert result.exit_code == 1
    assert "ZeroDivisionError" in result.log.read_text()


def test_cpu_time_is_the_childs(tmp_path):
    busy = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end:\n    pass\n"
    result = run_python(tmp_path, busy)
    assert result.exit_code == 0
    assert 0.4 < result.cpu_s < result.wall_s + 0.1


def test_a_hang_is_killed_at_the_timeout_with_everything_it_started(tmp_path):
    # The grandchild ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    begin = time.monotonic()
    limits = Limits(wall_s=1.5, memory_mb=1024, file_mb=1)
    result = run_python(tmp_path, code, limits, grace_s=0.5, allow_subprocess=True)
    assert time.monotonic() - begin < 10
    assert result.timed_out
    assert result.signal == signal.SIGTERM and result.exit_code is None
    assert 1.5 <= result.wall_s < 5
    assert "started" in result.log.read_text()
    deadline = time.monotonic() + 5
    while running_in(tmp_path / "run") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running_in(tmp_path / "run") == [], "the grandchild survived the timeout"


def test_memory_limit(tmp_path):
    result = run_python(tmp_path, "block = bytearray(3 * 1024**3)\nprint('allocated')\n")
    assert result.exit_code != 0
    assert "MemoryError" in result.log.read_text()
    assert "allocated" not in result.log.read_text()


def test_file_size_limit(tmp_path):
    code = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (3 * 1024 * 1024))\n"
    result = run_python(tmp_path, code)
    # Python ignores SIGXFSZ and raises OSError(EFBIG); another program would die of the signal.
    assert result.signal == signal.SIGXFSZ or (result.exit_code == 1 and "File too large" in result.log.read_text())
    assert (tmp_path / "run" / "big.bin").stat().st_size <= 1024 * 1024


def test_environment_is_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("NATS_URL", "nats://10.0.0.1:4222")
    monkeypatch.setenv("ARX_HOME", "/secret/home")
    result = run_python(tmp_path, "import json, os\njson.dump(dict(os.environ), open('env.json', 'w'))\n")
    assert result.exit_code == 0
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    run_dir = str((tmp_path / "run").resolve())
    assert "OPENAI_API_KEY" not in env and "NATS_URL" not in env and "ARX_HOME" not in env
    assert env["HOME"] == run_dir
    assert env["ARX_ARTIFACT_DIR"] == os.path.join(run_dir, "artifact")
    assert (env["PYTHONHASHSEED"], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("0", "1", "1")
    assert env["PATH"] == os.environ["PATH"]


def test_stdin_is_empty(tmp_path):
    result = run_python(tmp_path, "import sys\nprint(repr(sys.stdin.read()))\n")
    assert result.log.read_text() == "''\n"


def test_a_command_that_cannot_start_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_command(["{python}-does-not-exist"], tmp_path, LIMITS, log_path=tmp_path / "log")


# The official GPU tasks launch with torchrun; on CPU, workers with a gloo process group go through the
# same launcher, sandbox and fence. Once a worker has a process group torchrun prefixes its lines with
# [rankN]:, and after the workers' tracebacks it prints one of its own.
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
DISTRIBUTED = "import torch.distributed as dist\ndist.init_process_group('gloo')\n"


def run_torchrun(tmp_path: Path, code: str, limits: Limits = LIMITS, **kwargs):
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "train.py").write_text(DISTRIBUTED + code)
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", "train.py"]
    return run_command(command, run_dir, limits, log_path=tmp_path / "run.log", allow_subprocess=True, **kwargs)


def test_a_worker_crash_under_torchrun_shows_the_recipes_frame_and_ends_the_others(tmp_path, isolation):
    # Rank 1 would sleep a minute: torchrun ends it (killpg of its session) once rank 0 has failed.
    code = ("import time\ndef step():\n    raise RuntimeError('broken on purpose')\n"
            "if dist.get_rank() == 0:\n    step()\ntime.sleep(60)\n")
    result = run_torchrun(tmp_path, code, Limits(wall_s=50, memory_mb=0, file_mb=1))
    log = result.log.read_text()
    assert result.exit_code != 0 and not result.timed_out and result.wall_s < 40, log
    assert "[rank0]: RuntimeError: broken on purpose" in log and "ChildFailedError" in log
    assert "PermissionError" not in log
    evidence = crash_evidence("train", log, result.signal, result.exit_code, result.peak_rss_mb, {"memory_mb": 0})
    assert (evidence.frame, evidence.message) == ("train.py:5 in step", "RuntimeError: broken on purpose")
    assert running_in(tmp_path / "run") == []


@pytest.fixture(params=["namespace", "reaper"])
def isolation(request, monkeypatch):
    """Each torchrun test twice: in a pid namespace, and as on a host without one (executors/reaper.py)."""
    if request.param == "reaper":
        monkeypatch.setattr(sandbox, "namespaces", lambda: ((), ()))
    elif "pid" not in sandbox.namespaces()[1]:
        pytest.skip("no pid namespace on this host")
    return request.param


def test_torchrun_workers_die_with_the_run_at_the_wall_clock(tmp_path, isolation):
    hold = ("import time\nblock = bytearray(64 * 1024**2)\n"
            "print(f'holding {dist.get_rank()}', flush=True)\ntime.sleep(60)\n")
    begin = time.monotonic()
    result = run_torchrun(tmp_path, hold, Limits(wall_s=8, memory_mb=0, file_mb=1), grace_s=1)
    assert result.timed_out and time.monotonic() - begin < 20
    assert "holding 0" in result.log.read_text() and "holding 1" in result.log.read_text()
    deadline = time.monotonic() + 5
    while running_in(tmp_path / "run") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running_in(tmp_path / "run") == [], "a torchrun worker survived the wall clock"


def test_torchrun_workers_die_when_the_run_is_killed_outright(tmp_path, isolation):
    # The disk watchdog kills at once (SIGKILL): torchrun gets no chance to end its workers, which run
    # in sessions of their own, so the sandbox must find them below the run's first process.
    code = ("import time\nwith open(f'fill-{dist.get_rank()}.bin', 'wb') as f:\n    f.write(bytes(8 * 2**20))\n"
            "print('filled', flush=True)\ntime.sleep(60)\n")
    begin = time.monotonic()
    result = run_torchrun(tmp_path, code, Limits(wall_s=50, memory_mb=0, file_mb=64, disk_mb=5))
    assert result.killed_by == "disk_mb" and time.monotonic() - begin < 40, result
    deadline = time.monotonic() + 5
    while running_in(tmp_path / "run") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running_in(tmp_path / "run") == [], "a torchrun worker survived its run's SIGKILL"


def test_a_process_the_recipe_left_in_a_session_of_its_own_ends_with_the_run(tmp_path, isolation):
    code = "import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True)\nprint('left it')\n"
    result = run_python(tmp_path, code, allow_subprocess=True)
    assert result.exit_code == 0 and result.log.read_text() == "left it\n"
    assert running_in(tmp_path / "run") == [], "the recipe's orphan outlived its run"


def test_a_recipe_may_end_the_processes_it_started_and_no_other(tmp_path, isolation):
    decoy = subprocess.Popen(["sleep", "60"])
    try:
        code = ("import os, signal, subprocess, time\n"
                "child = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
                "os.killpg(child.pid, signal.SIGKILL)\n"
                "print('ended its own:', child.wait())\n"
                f"try:\n    os.kill({decoy.pid}, signal.SIGKILL)\n"
                "except OSError as exc:\n    print(type(exc).__name__)\n")
        result = run_python(tmp_path, code, allow_subprocess=True)
        lines = result.log.read_text().splitlines()
        # In a pid namespace the decoy is not there to be seen; without one the fence refuses it.
        expected = "ProcessLookupError" if isolation == "namespace" else "PermissionError"
        assert lines == [f"ended its own: {-signal.SIGKILL}", expected], lines
        assert decoy.poll() is None, "a recipe killed a process it did not start"
    finally:
        decoy.kill()
