"""The sandboxed side of evaluation: a warm process that runs one untrusted predict() and exits.

Started by evaluators.sandbox as `python -I -B sandbox_child.py TASK_PY IO_DIR [MODULE ...]`: it imports
the task module and MODULEs (the slow part, done before any job arrives), says "ready" on stdout, reads
one job line from stdin, runs predict() behind an audit-hook fence and answers with one JSON line.
Until the fence goes up only trusted code runs here (this file, the task module, the preloaded packages).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import site
import sys
import sysconfig
import traceback
from pathlib import Path

import numpy as np

# Files of the Python installation that code may load; anything else there (such as scikit-learn's
# bundled data sets, labels included) stays closed.
CODE_SUFFIXES = (".py", ".pyc", ".so")
ERROR_CHARS = 20_000  # the end of a traceback holds the frames that matter
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
REFUSED_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "signal.pthread_kill", "os.symlink", "os.link",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
})


class Fence:
    """An audit hook that confines file access and refuses network, processes and native calls.

    It guards against a model reading the held-out labels or reaching out, not against a determined
    attacker (Python audit hooks are not a security boundary); the process, its rlimits and its
    scrubbed environment are the outer wall.
    """

    def __init__(self, writable: list[Path], code_roots: list[Path]):
        self.writable = tuple(os.path.realpath(p) for p in writable)
        self.code_roots = tuple(sorted({os.path.realpath(p) for p in code_roots}))

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open":
            self.check_open(*args[:3])
        elif event in REFUSED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed during evaluation")

    def check_open(self, path, mode, flags) -> None:
        if isinstance(path, int):
            return  # an already-open descriptor: nothing new is reached
        real = os.path.realpath(os.fsdecode(path))
        if real == os.devnull:
            return
        if os.path.isdir(real):
            raise PermissionError(f"sandbox: opening the directory {real} is not allowed")
        if _inside(real, self.writable):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if not writing and real.endswith(CODE_SUFFIXES) and _inside(real, self.code_roots):
            return
        raise PermissionError(f"sandbox: open of {real} is not allowed during evaluation")


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def python_roots() -> list[Path]:
    """Where the interpreter and installed packages live."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    roots.update(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    return [Path(root) for root in roots]


def load_task_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"arx_task_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_job(module, artifact_dir: Path, io_dir: Path) -> dict:
    with np.load(io_dir / "inputs.npz", allow_pickle=False) as data:
        inputs = {key: data[key] for key in data.files}
    sys.addaudithook(Fence([artifact_dir, io_dir], python_roots() + [Path(module.__file__).parent]))
    try:
        outputs = module.predict(artifact_dir, inputs)
        if not isinstance(outputs, dict):
            raise TypeError(f"predict returned {type(outputs).__name__}, not a dict of arrays")
        np.savez(io_dir / "outputs.npz", **{str(k): np.asarray(v) for k, v in outputs.items()})
    except BaseException:  # SystemExit and KeyboardInterrupt from model code are its failures too
        return {"ok": False, "error": traceback.format_exc()[-ERROR_CHARS:]}
    return {"ok": True}


def main(argv: list[str]) -> None:
    task_py, io_dir, preload = Path(argv[1]), Path(argv[2]), argv[3:]
    # The protocol keeps the real stdout; whatever model code prints goes to stderr.
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    module = load_task_module(task_py)
    for name in preload:
        importlib.import_module(name)
    channel.write("ready\n")
    channel.flush()
    line = sys.stdin.readline()
    if not line:
        os._exit(0)  # the pool closed before giving this worker a job
    job = json.loads(line)
    result = run_job(module, Path(job["artifact_dir"]), io_dir)
    channel.write(json.dumps(result) + "\n")
    channel.flush()
    os._exit(0)  # skip atexit handlers the model may have registered


if __name__ == "__main__":
    main(sys.argv)
