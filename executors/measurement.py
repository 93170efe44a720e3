"""What an executor measures of one run, from outside the recipe: the fields a TrialFinished or a
ReplicateFinished carries beyond its ids. Never a score."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from bus.events import ObjectRef
from evaluators.spec import Budgets
from executors.devices import CPU, CUDA
from executors.sandbox import Limits, RunResult


class Measurement(msgspec.Struct, frozen=True, kw_only=True):
    executor: str
    commit: str
    exit_code: int | None
    signal: int | None
    timed_out: bool
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    limits: dict[str, float]
    killed_by: str | None
    disk_mb: float
    isolation: list[str]
    log_tail: str
    log: ObjectRef
    artifact: ObjectRef | None
    stage: str
    measured: dict[str, float]
    device_s: dict[str, float]

    def fields(self) -> dict:
        """The finished event's measured fields, by name."""
        return msgspec.structs.asdict(self)


def trial_limits(budgets: Budgets) -> Limits:
    """The sandbox limits of a trial's run under the task's budgets: an executor's, `arx noise`'s."""
    return Limits(wall_s=budgets.train_s, memory_mb=budgets.memory_mb, file_mb=budgets.file_mb,
                  disk_mb=budgets.disk_mb)


def limits_of(limits: Limits) -> dict[str, float]:
    return {"train_s": limits.wall_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
            "disk_mb": limits.disk_mb}


@dataclass
class DeviceSeconds:
    """What the runs of one trial (its preflight checks and its full run) held: CPU core-seconds, and
    GPU-seconds for every GPU the executor gave them, busy or not, as a rented GPU is billed."""

    gpus: int
    cpu: float = 0.0
    cuda: float = 0.0

    def add(self, result: RunResult) -> RunResult:
        self.cpu += result.cpu_s
        self.cuda += result.wall_s * self.gpus
        return result

    def by_kind(self) -> dict[str, float]:
        return {CPU: round(self.cpu, 3), **({CUDA: round(self.cuda, 3)} if self.gpus else {})}
