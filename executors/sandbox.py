"""Run one untrusted recipe command in its run dir, under limits, measured from outside.

Walls, outermost first:
- Namespaces, where the host allows them (checked once per process, recorded in RunResult.isolation):
  a user namespace (root inside maps to the executor's own user, with no powers over the host), a
  network namespace with no interfaces (not even the local nats-server is reachable), and a pid
  namespace in which the recipe is the first process: its parent and every other process of the host
  do not exist for it, and when it ends, everything it started ends with it.
- rlimits (address space, file size, no core files), its own process group that is killed as a whole
  on timeout (SIGTERM, then SIGKILL after a grace period) and after the leader exits, and a scrubbed
  environment.
- Watchdogs in this process: the wall clock, and the disk: the run dir (with the log) is summed every
  DISK_POLL_S and the group is killed above Limits.disk_mb (RunResult.killed_by = "disk_mb").
- The audit-hook fence (executors/fence.py) in every Python process of the recipe, up before its first
  line: files only inside the run dir (and read-only in the Python installation, bundled data sets
  sealed), no processes, no signals but to itself, no sockets. It is not a security boundary against
  native code (see there); the walls above are.

Wall time, CPU time and peak RSS come from os.wait4, not from the recipe. A run that failed with "No
space left on device" on a filesystem that really is full failed for the host's want, not the recipe's
(RunResult.host_fault); a recipe that raises ENOSPC on a roomy disk has only itself to blame.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from executors import fence
from executors.reaper import signal_all

log = logging.getLogger("arx.executor.sandbox")

MB = 1024 * 1024
KEPT_VARIABLES = ("PATH", "LANG")
RECIPE_SITE = Path(__file__).resolve().parent / "recipe_site"  # holds the sitecustomize that puts the fence up
REAPER = Path(__file__).resolve().parent / "reaper.py"
DISK_POLL_S = 0.5
# Every file or folder counts at least this much: a recipe that makes millions of empty files fills
# the disk's inodes, and the sum stops early at the budget, so one sample reads a bounded number.
ENTRY_BYTES = 4096
UNSHARE = "unshare"  # util-linux's
UNSHARE_CHECK_S = 10.0
# A filesystem with less free space than this (or no free inode) is full.
FULL_DISK_BYTES = 1 * MB
TAIL_BYTES = 64 * 1024  # the end of the log searched for the run's own report of a full disk
_DISK_FULL = re.compile(rb"No space left on device")
LOOPBACK_ENV = "ARX_LOOPBACK"  # read by recipe_site/sitecustomize.py
# Python options that skip PYTHONPATH or the site module, and with them the fence.
_SKIPS_FENCE = re.compile(r"^-[A-Za-z]*[IES][A-Za-z]*$")


@dataclass(frozen=True)
class Limits:
    wall_s: float
    memory_mb: int  # 0: no address-space limit (CUDA reserves far more virtual memory than it uses)
    file_mb: int
    disk_mb: int = 512
    cores: tuple[int, ...] = ()  # pin the recipe to these CPUs (empty: wherever the kernel puts it)


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # None when a signal ended the process
    signal: int | None
    timed_out: bool
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    log: Path
    killed_by: str | None = None  # the limit whose watchdog ended the run, other than the wall clock
    disk_mb: float = 0.0  # the most the run dir and the log held at one sample
    isolation: tuple[str, ...] = ()  # the walls this run had beyond rlimits: "fence", "net", "pid"
    host_fault: str | None = None  # why the run failed for the host's want, not the recipe's (a full disk)


@functools.cache
def namespaces() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The unshare prefix this host allows and what it isolates, tried once per process.

    Falls back from a user + network + pid namespace to a user + network namespace to none, with a
    warning, where a host (or a container) refuses them.
    """
    unshare = shutil.which(UNSHARE)
    tries = (
        (("net", "pid"), ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc")),
        (("net",), ("--user", "--map-root-user", "--net")),
    )
    for isolates, options in tries if unshare else ():
        prefix = (unshare, *options, "--")
        try:
            ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=UNSHARE_CHECK_S).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return prefix, isolates
    log.warning("no namespaces on this host (unshare missing or refused): recipes run with network access")
    return (), ()


def recipe_env(run_dir: Path, *, allow_subprocess: bool = False) -> dict[str, str]:
    """Only what a recipe needs: no API keys, no NATS_* or ARX_* settings of the host; and the fence."""
    env = {key: os.environ[key] for key in KEPT_VARIABLES if key in os.environ}
    env.update(
        HOME=str(run_dir),
        TMPDIR=str(run_dir),  # temporary files count against the disk budget and go with the run dir
        PYTHONHASHSEED="0",
        PYTHONUNBUFFERED="1",  # a killed recipe's last lines still reach the log
        PYTHONNOUSERSITE="1",  # a user site would run .pth files from the tree before the fence
        PYTHONPATH=str(RECIPE_SITE),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        ARX_ARTIFACT_DIR=str(run_dir / "artifact"),
    )
    readable, sealed = fenced_paths()
    env[fence.ENV] = fence.policy_env(
        writable=[run_dir],
        readable=[*readable, *linked_in(run_dir)],
        sealed=sealed,
        processes=allow_subprocess,
        sockets=allow_subprocess,
        # torch loads its own libraries with ctypes; torchrun loads libc, but may start processes anyway.
        libraries="any" if allow_subprocess else "installed",
        # In its own pid namespace a recipe sees only its own processes: torchrun may end its workers.
        any_signal=allow_subprocess and "pid" in namespaces()[1],
    )
    if allow_subprocess and "net" in namespaces()[1]:
        env[LOOPBACK_ENV] = "1"  # torchrun's rendezvous and NCCL talk over the namespace's own loopback
    return env


def linked_in(run_dir: Path) -> list[str]:
    """Where the links that point out of a prepared run dir lead (a real task's data, linked in by its
    trusted prepare(); a tree's own links cannot point outside): readable, not writable."""
    run_dir = os.path.realpath(run_dir)
    targets = []
    for folder, folders, files in os.walk(run_dir):
        for name in folders + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if target != run_dir and not target.startswith(run_dir + os.sep):
                    targets.append(target)
    return targets


@functools.cache
def fenced_paths() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a recipe may read (the Python installation) and what stays sealed inside it: the data sets
    bundled with Python, and arx's evaluators (tasks, held-out splits) wherever arx is installed."""
    roots = fence.python_roots()
    evaluators = importlib.util.find_spec("evaluators")
    own = list(evaluators.submodule_search_locations) if evaluators else []
    return (*roots, str(RECIPE_SITE)), (*fence.bundled_data(roots), *own)


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _set_limits(limits: Limits):
    def apply() -> None:  # runs in the child between fork and exec: only async-signal-safe work
        # If the executor dies (kill -9), the kernel kills the recipe too instead of orphaning it.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if limits.memory_mb > 0:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * MB,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * MB,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if limits.cores:
            os.sched_setaffinity(0, limits.cores)  # inherited by every thread and process it starts

    return apply


def _kill_run(pgid: int, sig: int) -> None:
    """Signal a running run: every process below its first one, whatever their group (the reaper keeps
    those of a run without a pid namespace below it), and its process group. Only while the first
    process is not yet reaped: after that its pid may belong to another process."""
    signal_all(sig, pgid)
    _kill_group(pgid, sig)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def disk_used(paths: list[Path], stop_above: float) -> float:
    """Bytes on disk under paths (files, folders, their entries), summed until it passes stop_above."""
    total = 0
    folders = []
    for path in paths:
        try:
            info = path.lstat()
        except OSError:
            continue
        total += max(info.st_blocks * 512, ENTRY_BYTES)
        if path.is_dir() and not path.is_symlink():
            folders.append(path)
    while folders and total <= stop_above:
        try:
            entries = os.scandir(folders.pop())
        except OSError:  # removed while we looked
            continue
        with entries:
            for entry in entries:
                try:
                    total += max(entry.stat(follow_symlinks=False).st_blocks * 512, ENTRY_BYTES)
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                except OSError:
                    continue
    return total


def full_disk(path: Path) -> str | None:
    """How the filesystem holding path is full, in words; None while it has room."""
    info = os.statvfs(path)
    free = info.f_bavail * info.f_frsize
    if free < FULL_DISK_BYTES:
        return f"{free / MB:.2f} MB free"
    if info.f_files and not info.f_favail:  # a filesystem that reports inodes at all ran out of them
        return "no free inodes"
    return None


def _log_end(log_path: Path) -> bytes:
    with open(log_path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - TAIL_BYTES))
        return handle.read()


def host_fault(result: RunResult, run_dir: Path, limits: Limits) -> str | None:
    """The host's fault behind a failed run: it reported "No space left on device", its filesystem
    really is full, and the run dir holds no more than its budget (else filling it was the recipe's doing)."""
    if result.timed_out or result.killed_by or not (result.exit_code or result.signal is not None):
        return None  # it ended well, or one of its own budgets ended it
    if not _DISK_FULL.search(_log_end(result.log)):
        return None
    full = full_disk(run_dir)
    if full is None or disk_used([run_dir, result.log], limits.disk_mb * MB) > limits.disk_mb * MB:
        return None
    return f"host fault: the disk under {run_dir} is full ({full}): the run failed with No space left on device"


def _check_program(program: str, run_dir: Path) -> None:
    found = os.path.exists(run_dir / program) if "/" in program else shutil.which(program)
    if not found:
        raise FileNotFoundError(f"no such program: {program}")


def check_fenceable(command: list[str]) -> None:
    """Refuse a command whose Python would skip the fence (-I, -E or -S after {python})."""
    for index, arg in enumerate(command):
        if arg != "{python}":
            continue
        options = command[index + 1:]
        while options and options[0].startswith("-") and options[0] not in ("-", "--"):
            option = options.pop(0)
            if option.startswith(("-c", "-m")):
                break
            if option[1] in "WX":  # -W and -X take a value, attached or next
                if len(option) == 2 and options:
                    options.pop(0)
            elif _SKIPS_FENCE.match(option):
                raise ValueError(f"command {command}: {option} would run the recipe without its sandbox's fence")


class _Watchdog(threading.Thread):
    """Ends the run at the wall clock (politely) or at the disk budget (at once), sampling the disk."""

    def __init__(self, pgid: int, limits: Limits, watched: list[Path], grace_s: float):
        super().__init__(name=f"watchdog-{pgid}", daemon=True)
        self.pgid, self.limits, self.watched, self.grace_s = pgid, limits, watched, grace_s
        self.done = threading.Event()
        self.timed_out = False
        self.killed_by: str | None = None
        self.peak_disk = 0.0

    def run(self) -> None:
        deadline = time.monotonic() + self.limits.wall_s
        budget = self.limits.disk_mb * MB
        while True:
            used = disk_used(self.watched, budget)
            self.peak_disk = max(self.peak_disk, used)
            if used > budget:
                self.killed_by = "disk_mb"
                _kill_run(self.pgid, signal.SIGKILL)  # every moment more it writes
                return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.done.wait(min(DISK_POLL_S, left)):
                return
        self.timed_out = True
        _kill_run(self.pgid, signal.SIGTERM)
        if not self.done.wait(self.grace_s):
            _kill_run(self.pgid, signal.SIGKILL)


def run_command(
    command: list[str], run_dir: Path, limits: Limits, *, log_path: Path, grace_s: float = 2.0,
    allow_subprocess: bool = False, env: dict[str, str] | None = None,
) -> RunResult:
    """Run command (with `{python}` replaced by this interpreter) in run_dir; blocks until it ends.

    allow_subprocess lets the recipe's Python start processes (the fence refuses them otherwise); `env`
    adds to the scrubbed environment (the GPUs a trial may see, ARX_SMOKE for a preflight's smoke run).
    Raises ValueError for a command that would skip the fence, OSError when it cannot start. A failure
    that was the host's (a full disk) is in RunResult.host_fault.
    """
    check_fenceable(command)
    run_dir = Path(run_dir).resolve()
    prefix, isolates = namespaces()
    if allow_subprocess and "pid" not in isolates:  # what a pid namespace would end, the reaper ends
        prefix = (*prefix, sys.executable, "-E", str(REAPER), str(grace_s / 2))
    argv = [*prefix, *(arg.replace("{python}", sys.executable) for arg in command)]
    isolation = (("fence",) if any("{python}" in arg for arg in command) else ()) + isolates
    _check_program(argv[len(prefix)], run_dir)  # behind unshare, a missing one would only show in the log
    with open(log_path, "wb") as log_file:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=run_dir,
            env={**recipe_env(run_dir, allow_subprocess=allow_subprocess), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_set_limits(limits),
        )
    watchdog = _Watchdog(proc.pid, limits, [run_dir, Path(log_path)], grace_s)
    watchdog.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # we reaped it, not Popen
    watchdog.done.set()
    _kill_group(proc.pid, signal.SIGKILL)  # whatever the recipe left running in its group
    watchdog.join()
    if watchdog.killed_by:
        with open(log_path, "a") as log_file:  # the last line of the log is what a crash's evidence shows
            log_file.write(f"\narx executor: the run dir held {watchdog.peak_disk / MB:.0f} MB, over its "
                           f"disk_mb budget of {limits.disk_mb} MB: killed\n")
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    ended_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    if watchdog.timed_out and "pid" in isolates and exit_code == 128 + signal.SIGTERM:
        # The first process of a pid namespace ignores SIGTERM unless it handles it; sitecustomize's
        # handler exits 128 + SIGTERM. Report what ended it, as on a host without the namespace.
        exit_code, ended_by = None, signal.SIGTERM
    result = RunResult(
        exit_code=exit_code,
        signal=ended_by,
        timed_out=watchdog.timed_out,
        wall_s=wall_s,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        log=Path(log_path),
        killed_by=watchdog.killed_by,
        disk_mb=watchdog.peak_disk / MB,
        isolation=isolation,
    )
    # Now, while the run dir is as the recipe left it: the disk it filled is still full.
    return replace(result, host_fault=host_fault(result, run_dir, limits))
