"""Scoring from the official log, for tasks that run an official repository's script (scored_from = "log").

Such a run's log is the official output: the leaderboards read the same lines. So the evaluator reads
the metrics from the log the executor captured and stored, through the task's parse_log(text), and
from nothing else the recipe writes. The verdict stays the evaluator's: labels.label checks the task's
gates on these metrics. A log without the lines the score needs is the run's failure (a crash whose
evidence names the missing line); a parser that breaks otherwise is the harness's.
"""

from __future__ import annotations

import re
import time

from nats.js.errors import NotFoundError

from bus.events import _RunFinished
from evaluators.labels import Evaluation
from evaluators.spec import Task

# A number as Python prints one, and the nan or inf a diverged run prints instead.
NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|nan|inf)"


class LogFormatError(ValueError):
    """The log lacks a line the score or a gate needs, or holds one that cannot be read."""


def last_match(pattern: re.Pattern, lines: list[str], what: str) -> re.Match:
    """The match in the last line that matches; LogFormatError naming `what` when none does."""
    return lines_matching(pattern, lines, what)[-1][1]


def lines_matching(pattern: re.Pattern, lines: list[str], what: str) -> list[tuple[int, re.Match]]:
    """(index, match) of every line the pattern matches; LogFormatError naming `what` when none does."""
    found = [(i, m) for i, line in enumerate(lines) if (m := pattern.search(line))]
    if not found:
        raise LogFormatError(f"the log has no {what}")
    return found


def score_log(task: Task, data: bytes) -> Evaluation:
    """The task's metrics from one run's log bytes."""
    started = time.monotonic()
    try:
        measured = task.module().parse_log(data.decode("utf-8", "replace"))
    except LogFormatError as exc:
        return Evaluation(failed="evaluate", error=f"{type(exc).__name__}: {exc}", wall_s=time.monotonic() - started)
    metrics = {str(name): float(value) for name, value in measured.items()}
    return Evaluation(metrics=metrics, wall_s=time.monotonic() - started)


async def evaluate_log(bus, task: Task, finished: _RunFinished) -> Evaluation:
    """Score a finished run (a trial's or a confirmation rerun's) from the full log the executor stored."""
    if finished.log is None:
        return Evaluation(failed="artifact", error="the run left no log to score")
    try:
        data = await bus.get_object(finished.log)
    except (NotFoundError, ValueError) as exc:
        return Evaluation(failed="artifact", error=f"log {finished.log.name}: {exc}")
    return score_log(task, data)
