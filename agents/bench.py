"""`arx bench research`: does lineage feedback make the loop better? One campaign per arm and seed.

Every run gets its own nats-server (a temporary store on a free port), evaluator, executors and the
arm's offline specialists (agents.arms.roster), each a separate OS process, and starts from the task's
starting recipe. The table of baseline, best, improvement and labels goes to stdout (or JSON) and
into a section of BENCHMARKS.md that each run replaces. Improvement is counted in the task's
direction: positive means better (for a lower-is-better score, how much lower).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agents.arms import ARMS, roster
from bus.argtypes import positive_int
from bus.connection import Bus
from bus.local import LocalServer, Roles
from bus.settings import load_settings
from evaluators.campaign import stop_campaign
from evaluators.spec import load_task
from projections import ledger, status, views
from projections.follow import catch_up
from projections.lineage import Lineage

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "Research: lineage against the control arms"
TARGET_PCT = 20.0
POLL_S = 2.0
STOP_TIMEOUT_S = 5  # the campaign is over: a role slow to stop on SIGTERM is killed
JSON_KEYS = ("arm", "seed", "baseline_score", "best_score", "improvement_pct", "labels", "ledger")


@dataclass
class Run:
    arm: str
    seed: int
    baseline_score: float | None
    best_score: float | None
    improvement_pct: float | None  # signed change of the score, as in `arx status` and `arx audit`
    labels: dict[str, int]
    trials: int
    wall_s: float
    complete: bool  # False: the run hit its time limit and the campaign was stopped early
    direction: str = "min"
    ledger: dict = field(default_factory=dict)  # what the campaign cost, as `arx status --json` says

    @property
    def better_pct(self) -> float:
        """Improvement in the task's direction: positive is better (0 when nothing was measured)."""
        if self.improvement_pct is None:
            return 0.0
        return (self.improvement_pct if self.direction == "max" else -self.improvement_pct) + 0.0


def run_one(task_name: str, arm: str, seed: int, *, trials: int, executors: int, root: Path, timeout_s: float) -> Run:
    """One campaign on a cluster of its own, from start to stop (or to timeout_s)."""
    server = LocalServer(root / "nats", home=root / "home").start()
    procs = None
    try:
        env = {**os.environ, "NATS_URL": server.url, "ARX_HOME": str(root / "home")}
        procs = Roles(env, root / "logs", cwd=root)
        procs.start("evaluator", "evaluator", "--name", "evaluator-1")
        for i in range(1, executors + 1):
            procs.start(f"executor-{i}", "executor", "--name", f"executor-{i}")
        campaign = f"research-{arm}-{seed}"
        # The agents wait for their campaign to start. Seeds differ per agent: two agents of one policy
        # on one surface (the generic arm) must not draw the same points.
        for i, member in enumerate(roster(load_task(task_name).spec, arm)):
            procs.start(
                member.specialist, "agent", "--policy", member.policy, "--specialist", member.specialist,
                "--surface", member.surface, "--campaign", campaign, "--seed", str(seed * 100 + i),
            )
        started = time.monotonic()
        procs.command(
            "campaign", "start", "--task", task_name, "--trials", str(trials), "--campaign", campaign, "--arm", arm
        )
        summary, complete = asyncio.run(_wait_stopped(load_settings(env), campaign, procs, timeout_s))
        return Run(
            arm=arm,
            seed=seed,
            baseline_score=summary["baseline_score"],
            best_score=summary["best_score"],
            improvement_pct=views.improvement_pct(summary["baseline_score"], summary["best_score"]),
            labels=summary["labels"],
            trials=sum(summary["labels"].values()),
            wall_s=round(time.monotonic() - started, 1),
            complete=complete,
            direction=summary["direction"],
            ledger=summary["ledger"],
        )
    finally:
        if procs is not None:
            procs.stop_all(timeout=STOP_TIMEOUT_S)
        server.kill()


async def _wait_stopped(settings, campaign: str, procs: Roles, timeout_s: float) -> tuple[dict, bool]:
    """The campaign's summary once it stopped with nothing in flight; stopped by hand after timeout_s."""
    deadline = time.monotonic() + timeout_s
    async with await Bus.connect(settings, role="admin", name="arx-bench") as bus:
        lineage = Lineage()
        while True:
            await catch_up(bus, lineage)
            summary = views.summary(lineage, campaign)  # the ledger and the rules only once it is over
            if summary is not None and summary["stopped"] and summary["in_flight"] == 0:
                return status.summary(lineage, campaign), True
            if failed := procs.failed():
                raise RuntimeError(f"{failed[0]} exited with an error: {procs.log(failed[0])[-2000:]}")
            if time.monotonic() > deadline:
                if summary is None:
                    raise RuntimeError(f"campaign {campaign} did not start within {timeout_s:.0f}s")
                await stop_campaign(bus, campaign, f"bench: no result within {timeout_s:.0f}s")
                await asyncio.sleep(POLL_S)
                await catch_up(bus, lineage)
                return status.summary(lineage, campaign), False
            await asyncio.sleep(POLL_S)


def _cell(value, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.4g}{suffix}"


def table(runs: list[Run]) -> list[str]:
    lines = ["| arm | seed | baseline | best | improvement | trials | cost | labels |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        labels = ", ".join(f"{label} {n}" for label, n in sorted(run.labels.items()))
        note = "" if run.complete else " (stopped at the time limit)"
        cost = ledger.text(run.ledger) if run.ledger else "-"
        lines.append(
            f"| {run.arm} | {run.seed} | {_cell(run.baseline_score)} | {_cell(run.best_score)} |"
            f" {_cell(run.improvement_pct, '%')} | {run.trials}{note} | {cost} | {labels} |"
        )
    return lines


def medians(runs: list[Run]) -> dict[str, float | None]:
    by_arm: dict[str, list[float]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, []).append(run.better_pct)
    return {arm: statistics.median(values) for arm, values in by_arm.items()}


def verdict(runs: list[Run]) -> list[str]:
    """The target: the lineage arm improves by TARGET_PCT and beats no-lineage on the median."""
    median = medians(runs)
    lines = [f"- {arm}: median improvement {value:.1f}% (in the task's direction)" for arm, value in median.items()]
    if "lineage" in median:
        met = "met" if median["lineage"] >= TARGET_PCT else "not met"
        lines.append(f"- target, lineage improves by at least {TARGET_PCT:.0f}%: {met}")
    if "lineage" in median and "no-lineage" in median:
        beats = "yes" if median["lineage"] > median["no-lineage"] else "no"
        lines.append(f"- lineage beats no-lineage on the median: {beats}")
    return lines


def section(command: str, task_name: str, runs: list[Run]) -> str:
    return "\n".join(
        [
            f"## {SECTION}",
            "",
            f"`{command}`",
            "",
            f"Task {task_name}, each run on its own nats-server, evaluator, executors and the arm's offline",
            "specialists, from the same starting recipe. Improvement: the best kept trial's score against the",
            "baseline, signed change in percent as in `arx status` (negative when a lower-is-better score went down).",
            "",
            *table(runs),
            "",
            *verdict(runs),
            "",
        ]
    )


def replace_section(path: Path, title: str, text: str) -> None:
    """Put text in place of the `## title` section of a markdown file (appended if there is none)."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    head = f"## {title}"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == head), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + text + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    path.write_text(new.rstrip("\n") + "\n")


def report(title: str, text: str, *, write: bool) -> None:
    """Print a benchmark's section, and put it in place of its section in BENCHMARKS.md when asked to."""
    print(text)
    if write:
        replace_section(BENCHMARKS, title, text)


def parse_arms(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if not arms or unknown:
        raise ValueError(f"--arms takes a comma-separated list of {', '.join(ARMS)}, not {text!r}")
    return list(dict.fromkeys(arms))


def research(args) -> list[Run]:
    arms = parse_arms(args.arms)
    task = load_task(args.task)
    budgets = task.spec.budgets
    timeout_s = args.run_timeout or args.trials * (budgets.train_s + budgets.eval_s) + 120
    workdir = Path(tempfile.mkdtemp(prefix="arx-bench-"))
    runs = []
    try:
        for seed in range(args.seeds):
            for arm in arms:
                run = run_one(
                    task.name, arm, seed, trials=args.trials, executors=args.executors,
                    root=workdir / f"{arm}-{seed}", timeout_s=timeout_s,
                )
                sys.stderr.write(f"bench research: {table([run])[-1]}\n")
                runs.append(run)
    except BaseException:
        sys.stderr.write(f"bench research: logs of the runs are in {workdir}\n")
        raise
    if args.keep:
        sys.stderr.write(f"bench research: logs of the runs are in {workdir}\n")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def command_line(args) -> str:
    line = f"arx bench research --task {args.task} --arms {args.arms} --trials {args.trials} --seeds {args.seeds}"
    return line + (f" --executors {args.executors}" if args.executors != 1 else "")


def cli_arguments(parser) -> None:
    benches = parser.add_subparsers(dest="bench", required=True, parser_class=type(parser))
    research = benches.add_parser("research", help="campaigns per arm and seed, each on a cluster of its own")
    research.add_argument("--task", default="digits-speedrun")
    research.add_argument("--arms", default="lineage,no-lineage", help="comma-separated: lineage, no-lineage, ...")
    research.add_argument("--trials", type=positive_int, default=40, help="trials per campaign")
    research.add_argument("--seeds", type=positive_int, default=3, help="campaigns per arm (seeds 0..N-1)")
    research.add_argument("--executors", type=positive_int, default=1, help="executor processes per run")
    research.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    research.add_argument("--run-timeout", type=float, help="seconds per run before it is stopped")
    research.add_argument("--benchmarks", help="the markdown file to write the table into (default: BENCHMARKS.md)")
    research.add_argument("--no-write", action="store_true", help="do not write the table into BENCHMARKS.md")
    research.add_argument("--keep", action="store_true", help="keep the runs' logs and stores")


def cli(args) -> int:
    runs = research(args)
    if args.json:
        print(json.dumps([{key: asdict(run)[key] for key in JSON_KEYS} for run in runs], indent=2))
    else:
        print("\n".join(table(runs) + [""] + verdict(runs)))
    if not args.no_write:
        replace_section(Path(args.benchmarks or BENCHMARKS), SECTION, section(command_line(args), args.task, runs))
    return 0
