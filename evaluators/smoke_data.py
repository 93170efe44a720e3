"""`arx smoke-data`: stand-in data for the official GPU tasks, in each recipe's own format and paths.

A task folder with a smoke_data.py (FOLDER_VARIABLE, write(folder)) makes its data from what ships with
the packages arx installs: Python's pydoc_data prose, scikit-learn's digits. Smoke data proves the
plumbing (a real recipe, run by arx on a GPU, scored from its own log), not the paper's numbers. The
command writes DIR/<task>/ for each task and prints the variable that points the task at it.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from evaluators.spec import load_task, task_names

MARKER = "SMOKE_DATA"  # marks a folder as ours to write over, and says what it holds to whoever finds it
NOTE = "Stand-in data written by `arx smoke-data`: it proves the plumbing, not the paper's numbers.\n"


def smoke_tasks() -> list[str]:
    """The tasks that have a smoke_data.py (not loaded here: its imports are heavy)."""
    return [name for name in task_names() if (load_task(name).folder / "smoke_data.py").exists()]


def write(name: str, out: Path) -> tuple[str, Path]:
    """Write task `name`'s stand-in data under out/<name>, over an earlier stand-in but never over other
    data (the real data set, say); returns the variable to set and the folder."""
    writer = load_task(name).smoke_data()
    if writer is None:
        raise ValueError(f"task {name} has no smoke data (tasks that have: {', '.join(smoke_tasks())})")
    folder = (out / name).resolve()
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).exists():
        raise FileExistsError(f"{folder} holds files that are not smoke data: not writing over them")
    writer.write(folder)
    (folder / MARKER).write_text(NOTE)
    return writer.FOLDER_VARIABLE, folder


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def cli_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the folder to write DIR/<task>/ into")
    parser.add_argument("--task", action="append", metavar="NAME",
                        help="a task to write for (repeatable; default: every task that has smoke data)")


def cli(args) -> int:
    for name in args.task or smoke_tasks():
        start = time.monotonic()
        variable, folder = write(name, args.out)
        print(f"{name}: {folder_mb(folder):.1f} MB in {time.monotonic() - start:.1f}s", file=sys.stderr)
        print(f"export {variable}={shlex.quote(str(folder))}")
    return 0
