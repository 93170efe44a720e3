"""Run a task's untrusted-side predict() in a separate, limited process, kept warm per task.

Loading a model means running the artifact's own code, so predict() never runs in the evaluator: a
child process (evaluators/sandbox_child.py) with rlimits, a scrubbed environment and its own process
group runs it on held-out inputs passed as an .npz file, and hands back outputs the same way. The
held-out targets never leave the evaluator. Importing torch takes seconds, so the pool keeps one
process per task already started and waiting; each serves exactly one job (an untrusted model never
shares a process with a later one) and the next one starts as soon as the last one is gone.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluators.spec import Task

MB = 1024 * 1024
CHILD = Path(__file__).resolve().parent / "sandbox_child.py"
# The child writes only its outputs and its own log; past this a write fails (Python ignores SIGXFSZ).
OUTPUT_MB = 16
START_TIMEOUT_S = 120.0
STDERR_TAIL = 4000
ANSWER_LIMIT = 1 * MB  # the child truncates its tracebacks well below this


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the model): the trial's outcome is the harness's fault."""


@dataclass(frozen=True)
class SandboxResult:
    outputs: dict[str, np.ndarray] | None  # None when predict did not finish
    wall_s: float
    timed_out: bool = False
    error: str = ""  # a traceback from predict, or how the process died, with its stderr tail
    signal: int | None = None


@dataclass
class _Worker:
    proc: asyncio.subprocess.Process
    io_dir: Path
    ready: asyncio.Task = field(init=False)

    def __post_init__(self):
        self.ready = asyncio.ensure_future(self.proc.stdout.readline())


def preload_modules(task: Task) -> list[str]:
    """Installed packages the starting recipe imports at top level: what a warm worker imports ahead."""
    local = {p.stem for p in task.recipe_dir.glob("*.py")}
    names = set()
    for path in task.recipe_dir.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return sorted(n for n in names - local if n not in sys.stdlib_module_names and importlib.util.find_spec(n))


def child_env(io_dir: Path) -> dict[str, str]:
    """Nothing of the evaluator's environment (NATS_URL, API keys, ARX_*) reaches model code."""
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(io_dir),
        "TMPDIR": str(io_dir),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _limits(memory_mb: int):
    def apply() -> None:  # between fork and exec: async-signal-safe calls only
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * MB,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_MB * MB,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class SandboxPool:
    """One warm sandbox process per task; `run` takes it, and the next starts once that one is gone."""

    def __init__(self, root: Path | None = None, *, python: str = sys.executable):
        self.root = Path(tempfile.mkdtemp(prefix="arx-sandbox-", dir=root))
        self.python = python
        self._warm: dict[Path, asyncio.Task] = {}  # task folder -> the spawn of its next process
        self._retiring: set[asyncio.Task] = set()
        self._closed = False

    def warm(self, task: Task) -> None:
        """Start a process for this task unless one is already starting or ready."""
        if not self._closed and task.folder not in self._warm:
            self._warm[task.folder] = asyncio.ensure_future(self._spawn(task))

    async def wait_warm(self, task: Task, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until this task's next process has finished importing (for benchmarks and tests)."""
        self.warm(task)
        worker = await asyncio.wait_for(asyncio.shield(self._warm[task.folder]), timeout)
        await asyncio.wait_for(asyncio.shield(worker.ready), timeout)

    async def _spawn(self, task: Task) -> _Worker:
        io_dir = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
        stderr = open(io_dir / "stderr.log", "wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-I", "-B", str(CHILD), str(task.folder / "task.py"), str(io_dir),
                *preload_modules(task),
                cwd=io_dir,
                env=child_env(io_dir),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=ANSWER_LIMIT,
                start_new_session=True,
                preexec_fn=_limits(task.spec.budgets.memory_mb),
            )
        finally:
            stderr.close()
        return _Worker(proc, io_dir)

    async def _take(self, task: Task) -> _Worker:
        if self._closed:
            raise SandboxError("the sandbox pool is closed")
        while True:
            self.warm(task)
            spawning = self._warm[task.folder]
            try:
                worker = await asyncio.shield(spawning)  # if we are cancelled, the pool still owns it
            except Exception:
                if self._warm.get(task.folder) is spawning:
                    del self._warm[task.folder]  # the next run tries a fresh spawn
                raise
            if self._warm.get(task.folder) is spawning:
                del self._warm[task.folder]
                return worker
            # a concurrent run took this one: wait for the next

    async def run(
        self, task: Task, artifact_dir: Path, inputs: dict[str, np.ndarray], *, budget_s: float | None = None
    ) -> SandboxResult:
        """predict(artifact_dir, inputs) in a fresh process; budget_s (default: the task's eval_s) counts
        from the moment the job is handed over, not from the process start."""
        worker = await self._take(task)
        try:
            return await self._serve(worker, artifact_dir, inputs, budget_s or task.spec.budgets.eval_s)
        finally:
            _kill_group(worker.proc)  # whatever the model left running in its group
            retiring = asyncio.ensure_future(self._retire(worker, task))  # off the caller's path
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)

    async def _retire(self, worker: _Worker, task: Task) -> None:
        await worker.proc.wait()
        shutil.rmtree(worker.io_dir, ignore_errors=True)
        # The next process starts now rather than during this one's predict, which it would slow down.
        self.warm(task)

    async def _serve(self, worker: _Worker, artifact_dir: Path, inputs, budget_s: float) -> SandboxResult:
        try:
            ready = await asyncio.wait_for(worker.ready, START_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise SandboxError(f"sandbox process not ready after {START_TIMEOUT_S:.0f}s") from None
        if ready != b"ready\n":
            _kill_group(worker.proc)
            await worker.proc.wait()
            raise SandboxError(f"sandbox process failed to start ({worker.proc.returncode}): {_tail(worker)}")
        np.savez(worker.io_dir / "inputs.npz", **inputs)
        started = time.monotonic()
        worker.proc.stdin.write(json.dumps({"artifact_dir": str(Path(artifact_dir).resolve())}).encode() + b"\n")
        try:
            await worker.proc.stdin.drain()
            line = await asyncio.wait_for(worker.proc.stdout.readline(), budget_s)
        except asyncio.TimeoutError:
            return SandboxResult(None, time.monotonic() - started, timed_out=True)
        except (BrokenPipeError, ConnectionResetError, ValueError):
            line = b""  # it died before reading the job, or flooded its answer channel
        wall_s = time.monotonic() - started
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            # No answer: the process died (a signal, a limit) or wrote garbage on its channel.
            _kill_group(worker.proc)
            await worker.proc.wait()
            return self._death(worker, wall_s)
        if not answer.get("ok"):
            return SandboxResult(None, wall_s, error=str(answer.get("error", "")))
        return self._outputs(worker, wall_s)

    @staticmethod
    def _death(worker: _Worker, wall_s: float) -> SandboxResult:
        code = worker.proc.returncode
        sig = -code if code is not None and code < 0 else None
        how = f"signal {signal.Signals(sig).name}" if sig else f"exit code {code}"
        error = f"sandbox ended without an answer ({how})\n{_tail(worker)}"
        return SandboxResult(None, wall_s, error=error, signal=sig)

    @staticmethod
    def _outputs(worker: _Worker, wall_s: float) -> SandboxResult:
        try:
            with np.load(worker.io_dir / "outputs.npz", allow_pickle=False) as data:
                outputs = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            return SandboxResult(None, wall_s, error=f"unreadable outputs: {type(exc).__name__}: {exc}")
        return SandboxResult(outputs, wall_s)

    async def close(self) -> None:
        self._closed = True
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for spawning in self._warm.values():
            try:
                worker = await spawning
            except Exception:  # it never started: nothing to stop
                continue
            _kill_group(worker.proc)
            await worker.proc.wait()
            worker.ready.cancel()
        self._warm.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _tail(worker: _Worker) -> str:
    try:
        return (worker.io_dir / "stderr.log").read_bytes()[-STDERR_TAIL:].decode(errors="replace")
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def scratch(home: Path, prefix: str) -> AsyncIterator[tuple[Path, SandboxPool]]:
    """A work folder under home and a sandbox pool in it, for runs scored outside the evaluator (`arx
    noise`, `arx audit --holdout`); both are gone on the way out."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=home))
    pool = SandboxPool(work)
    try:
        yield work, pool
    finally:
        await pool.close()
        shutil.rmtree(work, ignore_errors=True)
