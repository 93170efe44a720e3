"""airbench96: the trial's tree is airbench96_faster.py from the user's checkout plus the trial's edits,
with cifar10/ linked to the user's cached CIFAR-10 (train.pt and test.pt, which the script writes on
its first run). The metrics come from the script's table, one row per epoch and an `eval` row closing
each run:

    |  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |
    |          |   eval  |      0.0016  |     0.9844  |   0.9583  |       0.9611  |             27.2967  |

Columns are found by their header names, so an edit may add columns. The script has no warmup run: the
first run compiles the model inside its timed region, so the score leaves that run's time out.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from evaluators.official_log import LogFormatError
from evaluators.user_data import env_folder, link_into, user_folder

CHECKOUT = "ARX_AIRBENCH_DIR"
DATA = "ARX_AIRBENCH_DATA"  # default: the checkout's cifar10/
SETUP = "Run the script once in your checkout (with network) so that it caches CIFAR-10 there"

ROW = re.compile(r"^\|(.*)\|\s*$")
COLUMNS = ("epoch", "tta_val_acc", "total_time_seconds")


def prepare(run_dir: Path) -> None:
    """Link the cached CIFAR-10 into the trial's tree (executor side)."""
    checkout = env_folder(CHECKOUT)
    data = user_folder(DATA, default=checkout / "cifar10" if checkout else None, needs=("train.pt", "test.pt"),
                       setup=SETUP)
    link_into(run_dir, "cifar10", data)


def parse_log(text: str) -> dict[str, float]:
    lines = text.splitlines()
    header = next((cells for line in lines if (cells := table_cells(line)) and set(COLUMNS) <= set(cells)), None)
    if header is None:
        raise LogFormatError(f"the log has no table header with the columns {list(COLUMNS)}")
    epoch, accuracy, seconds = (header.index(name) for name in COLUMNS)
    runs = [cells for line in lines if (cells := table_cells(line)) and len(cells) == len(header)
            and cells[epoch] == "eval"]
    if not runs:
        raise LogFormatError("the table has no eval rows: no run finished")
    try:
        accuracies = [float(cells[accuracy]) for cells in runs]
        times = [float(cells[seconds]) for cells in runs]
    except ValueError as exc:
        raise LogFormatError(f"an eval row of the table does not hold numbers: {exc}") from None
    return {
        "time_s": statistics.fmean(times[1:] or times),
        "accuracy": statistics.fmean(accuracies),
        "accuracy_min": min(accuracies),
        "runs": float(len(runs)),
        "first_run_time_s": times[0],
    }


def table_cells(line: str) -> list[str] | None:
    row = ROW.match(line)
    return [cell.strip() for cell in row[1].split("|")] if row else None
