"""Run one untrusted recipe command in its run dir, under limits, measured from outside.

The command runs in its own process group with rlimits and a scrubbed environment; the whole group is
killed on timeout (SIGTERM, then SIGKILL after a grace period) and after the leader exits, so nothing
it started outlives the trial. Wall time, CPU time and peak RSS come from os.wait4, not from the recipe.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
KEPT_VARIABLES = ("PATH", "LANG")


@dataclass(frozen=True)
class Limits:
    wall_s: float
    memory_mb: int
    file_mb: int


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # None when a signal ended the process
    signal: int | None
    timed_out: bool
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    log: Path


def recipe_env(run_dir: Path) -> dict[str, str]:
    """Only what a recipe needs: no API keys, no NATS_* or ARX_* settings of the host."""
    env = {key: os.environ[key] for key in KEPT_VARIABLES if key in os.environ}
    env.update(
        HOME=str(run_dir),
        PYTHONHASHSEED="0",
        PYTHONUNBUFFERED="1",  # a killed recipe's last lines still reach the log
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        ARX_ARTIFACT_DIR=str(run_dir / "artifact"),
    )
    return env


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _set_limits(limits: Limits):
    def apply() -> None:  # runs in the child between fork and exec: only async-signal-safe work
        # If the executor dies (kill -9), the kernel kills the recipe too instead of orphaning it.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * MB,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * MB,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(
    command: list[str], run_dir: Path, limits: Limits, *, log_path: Path, grace_s: float = 2.0
) -> RunResult:
    """Run command (with `{python}` replaced by this interpreter) in run_dir; blocks until it ends."""
    run_dir = Path(run_dir).resolve()
    argv = [arg.replace("{python}", sys.executable) for arg in command]
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=run_dir,
            env=recipe_env(run_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_set_limits(limits),
        )
    done = threading.Event()
    timed_out = threading.Event()

    def watchdog() -> None:
        if done.wait(limits.wall_s):
            return
        timed_out.set()
        _kill_group(proc.pid, signal.SIGTERM)
        if not done.wait(grace_s):
            _kill_group(proc.pid, signal.SIGKILL)

    timer = threading.Thread(target=watchdog, name=f"watchdog-{proc.pid}", daemon=True)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # we reaped it, not Popen
    done.set()
    _kill_group(proc.pid, signal.SIGKILL)  # whatever the recipe left running in its group
    timer.join()
    return RunResult(
        exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        timed_out=timed_out.is_set(),
        wall_s=wall_s,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        log=Path(log_path),
    )
