"""The sandboxed side of evaluation: a warm process that runs one untrusted predict() and exits.

Started by evaluators.sandbox as `python -I -B sandbox_child.py TASK_PY IO_DIR [MODULE ...]`: it imports
the task module and MODULEs (the slow part, done before any job arrives), says "ready" on stdout, reads
one job line from stdin, runs predict() behind an audit-hook fence (executors/fence.py) and answers
with one JSON line.
Until the fence goes up only trusted code runs here (this file, the task module, the preloaded packages).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from executors.fence import CODE_SUFFIXES, Fence, bundled_data, python_roots

ERROR_CHARS = 20_000  # the end of a traceback holds the frames that matter


def load_task_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"arx_task_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_job(module, artifact_dir: Path, io_dir: Path) -> dict:
    with np.load(io_dir / "inputs.npz", allow_pickle=False) as data:
        inputs = {key: data[key] for key in data.files}
    # Model code may load code from the Python installation and the task's folder, and nothing else
    # there: not scikit-learn's data sets (labels included) nor the text the held-out items come from.
    roots = python_roots()
    fence = Fence(writable=[artifact_dir, io_dir], readable=[*roots, Path(module.__file__).parent],
                  sealed=bundled_data(roots), read_suffixes=CODE_SUFFIXES)
    sys.addaudithook(fence.hook)
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
