"""`arx noise`: how much a task's score moves between identical runs of its starting recipe.

Each run goes the way a trial's does, minus the bus: the campaign bundle unpacked into a fresh run dir,
the task's prepare(), the recipe run by executors.worker.run_recipe (the trial's limits, and for a timed
task the host's core lock and pinning, for a GPU task the devices given), scored as the evaluator scores
a trial (the artifact in its sandbox, or for an official task the lines of the run's log), and the score
picked the way the evaluator picks it (labels.judge): wall_s for digits-speedrun, val_bpb for golf-mini.
The standard deviation of the scores over their median is the relative noise floor a campaign records
(CampaignStarted.noise) and the evaluator's keep rule uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bus.argtypes import at_least_two
from bus.events import TrialFinished
from bus.settings import load_settings
from evaluators import labels
from evaluators.official_log import score_log
from evaluators.sandbox import SandboxPool, scratch
from evaluators.spec import Task, load_task
from evaluators.unpack import unpack_artifact
from evaluators.scoring import evaluate_artifact
from executors.devices import CPU, DEVICES_HELP, Devices, device_class, parse_devices
from executors.measurement import limits_of, trial_limits
from executors.worker import log_tail, pack_artifact, run_recipe


@dataclass(frozen=True)
class NoiseStats:
    runs: int
    median: float
    mean: float
    std: float  # sample standard deviation
    relative_std: float  # std / |median|: the noise floor
    spread: float  # (max - min) / |median|


def noise_stats(scores: Sequence[float]) -> NoiseStats:
    """The spread of repeated scores, relative to their median (the scale the keep rule uses)."""
    if len(scores) < 2:
        raise ValueError(f"measuring noise needs at least 2 scores, not {len(scores)}")
    median = statistics.median(scores)
    if median == 0:
        raise ValueError("the median score is 0: a noise relative to it is undefined")
    std = statistics.stdev(scores)
    return NoiseStats(
        runs=len(scores), median=median, mean=statistics.fmean(scores), std=std,
        relative_std=std / abs(median), spread=(max(scores) - min(scores)) / abs(median),
    )


@dataclass(frozen=True)
class NoiseReport:
    task: str
    score: str
    prior: float  # the task spec's noise
    scores: list[float]
    failures: list[str]  # runs that gave no score: "run 2: crash: ..."
    cpus: int
    load_before: tuple[float, float, float]  # os.getloadavg(): how busy the machine was
    load_after: tuple[float, float, float]

    @property
    def stats(self) -> NoiseStats:
        """Raises ValueError when any run failed (a noise over the runs that happened to work would lie)."""
        if self.failures:
            raise ValueError(f"{len(self.failures)} of {len(self.scores) + len(self.failures)} runs gave no score: "
                             + "; ".join(self.failures))
        return noise_stats(self.scores)

    def to_dict(self) -> dict:
        return {**asdict(self), "stats": asdict(self.stats)}

    def render(self) -> str:
        s = self.stats
        load = " ".join(f"{x:.2f}" for x in self.load_before), " ".join(f"{x:.2f}" for x in self.load_after)
        return "\n".join([
            f"{self.task}: {self.score} of the starting recipe over {s.runs} runs"
            f" ({self.cpus} CPUs, load average {load[0]} before, {load[1]} after)",
            "  scores: " + " ".join(f"{x:.6g}" for x in self.scores),
            f"  median {s.median:.6g}  mean {s.mean:.6g}  std {s.std:.3g}"
            f"  relative std {s.relative_std:.2%}  spread (max-min)/median {s.spread:.2%}",
            f"noise floor {s.relative_std:.4f} (task prior {self.prior:g})",
        ])


async def measure_noise(task: Task, runs: int, *, home: Path | None = None, devices: Devices = Devices(),
                        progress: Callable[[str], None] | None = None) -> NoiseReport:
    """Run the task's starting recipe `runs` times, one after another, and score every run."""
    if runs < 2:
        raise ValueError(f"measuring noise needs at least 2 runs, not {runs}")
    needs = device_class(task.spec.requires)
    if needs != devices.kind:
        where = "with --devices auto or a list like cuda:0,cuda:1" if needs != CPU else "on CPUs, without --devices"
        raise ValueError(f"task {task.name} runs on {needs} devices: measure its noise {where}")
    home = Path(home or load_settings().home)
    home.mkdir(parents=True, exist_ok=True)
    spec = task.spec
    bundle = task.bundle()
    heldout = None if spec.scored_from == "log" else await asyncio.to_thread(task.module().heldout)
    load_before = os.getloadavg()
    scores, failures = [], []
    async with scratch(home, f"noise-{task.name}-") as (work, pool):
        for run in range(runs):
            run_dir = work / f"run-{run}"
            run_dir.mkdir()
            await asyncio.to_thread(unpack_artifact, bundle, run_dir)
            verdict = await judged_run(task, run_dir, pool, heldout, home=home, devices=devices)
            if verdict.label == labels.PASSED:
                scores.append(verdict.score)
                line = f"run {run}: {spec.score} {verdict.score:.6g}"
            else:
                failures.append(f"run {run}: {verdict.label}: {verdict.evidence.message}")
                line = failures[-1]
            if progress is not None:
                progress(line)
            await asyncio.to_thread(shutil.rmtree, run_dir, ignore_errors=True)
    return NoiseReport(task=task.name, score=spec.score, prior=spec.noise, scores=scores, failures=failures,
                       cpus=len(os.sched_getaffinity(0)), load_before=load_before, load_after=os.getloadavg())


async def judged_run(task: Task, run_dir: Path, pool: SandboxPool, heldout: tuple | None, *, home: Path,
                     devices: Devices = Devices()) -> labels.Verdict:
    """Run the tree in run_dir as an executor runs a trial (the task's prepare(), the trial's limits, the
    host's locks) and judge it as the evaluator judges one, its artifact scored on `heldout` (the
    task's (inputs, targets); None for a task scored from its log). The log is written beside run_dir."""
    spec, settings = task.spec, load_settings()
    limits = trial_limits(spec.budgets)
    await asyncio.to_thread(task.module().prepare, run_dir)
    log_path = run_dir.with_name(f"{run_dir.name}.log")
    result = await asyncio.to_thread(run_recipe, spec, run_dir, limits, log_path, home=home, devices=devices)
    finished = TrialFinished(
        campaign_id="local", trial_id=run_dir.name, executor="arx-local",
        exit_code=result.exit_code, signal=result.signal, timed_out=result.timed_out, wall_s=result.wall_s,
        cpu_s=result.cpu_s, peak_rss_mb=result.peak_rss_mb, limits=limits_of(limits),
        killed_by=result.killed_by, disk_mb=result.disk_mb, log_tail=log_tail(result.log, settings.log_tail_chars),
    )
    evaluation = await _evaluate(task, run_dir, result.log, pool, heldout) if labels.scorable(finished) else None
    return labels.judge(finished, spec, evaluation)


async def _evaluate(
    task: Task, run_dir: Path, log_path: Path, pool: SandboxPool, heldout: tuple | None
) -> labels.Evaluation:
    """A finished run's evaluation, made as the evaluator makes a trial's (Scorer.evaluate), of the
    artifact the executor would store. `heldout` is the task's (inputs, targets); None for a task
    scored from its log."""
    if task.spec.scored_from == "log":
        return score_log(task, log_path.read_bytes())
    packed = await asyncio.to_thread(pack_artifact, run_dir, task.spec)
    if packed is None:
        return labels.Evaluation(failed="artifact", error="the run produced no artifact")
    inputs, targets = heldout
    return await evaluate_artifact(pool, task, packed, inputs, targets, name=run_dir.name)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cli_arguments(parser) -> None:
    parser.add_argument("--task", required=True)
    parser.add_argument("--runs", type=at_least_two, default=5)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--devices", default="cpu", help=DEVICES_HELP)


def cli(args) -> int:
    task = load_task(args.task)
    report = asyncio.run(measure_noise(task, args.runs, devices=parse_devices(args.devices), progress=_stderr))
    # A run without a score raises ValueError here: `arx` prints it as one line and exits 1.
    print(json.dumps(report.to_dict()) if args.json else report.render())
    return 0
