"""The official recipes through arx on this host's GPUs: shortened through their own settings
(`campaign start --short`), on stand-in data (`arx smoke-data`). Run it as scripts/gpu_smoke.sh.

For each task, on one fresh ARX_HOME and nats-server (scripts/up.sh --short --detach, so with the
projector, an evaluator, one executor on --devices and the task's offline roster):

1. a campaign of 3 trials: the baseline, an edit that changes nothing and a broken edit, both proposed
   by a probe specialist. The baseline and the unchanged edit must be scored from the official log
   lines; the broken edit must be a `crash` whose frame is the line the edit broke;
2. a campaign of the baseline alone, with a wall clock of half the baseline's wall time: it must be
   labelled train_budget_overrun, and once it is killed its processes must hold no GPU memory (sampled
   with nvidia-smi while it runs; skipped on a host without one).

Every trial must get exactly one outcome. Writes OUT/report.json: the checks, and per trial its wall
time, the sizes of its log and artifact, its time in the queue and arx's overhead around the run (for
BENCHMARKS.md).
Exits 1 when a check failed. The scores prove the plumbing, not the recipes.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.base import Context, Proposal, Specialist  # noqa: E402
from agents.edits import diff_trees  # noqa: E402
from bus import subjects  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.edits import path_in  # noqa: E402
from bus.events import TrialFinished, TrialProposed, TrialStarted, decode  # noqa: E402
from bus.local import free_port  # noqa: E402
from evaluators import smoke_data  # noqa: E402
from evaluators.spec import TaskSpec, load_task  # noqa: E402
from executors.devices import parse_devices  # noqa: E402

ARX = str(ROOT / ".venv" / "bin" / "arx")
TRIALS = 3  # the baseline and the two probes
BROKEN = "arx smoke: a deliberately broken edit"
UNCHANGED = "# arx smoke: an edit that changes nothing but this comment\n"
MIN_OVERRUN_S = 1.0
GPU_FREED_S = 30.0  # how long a killed trial's GPU memory may take to come back
GPU_SLACK_MIB = 256  # nvidia-smi's total moves a little by itself; a leaked CUDA context holds more
POLL_S = 1.0


# -- the probes -----------------------------------------------------------------------------------


def entry_file(command: list[str]) -> str:
    """The recipe file the command runs (`X.py`, or `-m a.b` as a/b.py): where a probe edits."""
    for index, arg in enumerate(command):
        if arg == "-m" and index + 1 < len(command):
            return command[index + 1].replace(".", "/") + ".py"
        if arg.endswith(".py"):
            return arg
    raise ValueError(f"the command {command} names no Python file of the recipe")


def first_statement_line(source: str) -> int:
    """The line before which a module-level statement runs first: after the docstring and the
    `from __future__` imports, which must stay first."""
    body = ast.parse(source).body
    for node in body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is body[0]
        if not docstring and not (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            return min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return len(source.splitlines()) + 1


def broken(source: str) -> tuple[str, int]:
    """The source with a raise as its first statement, and that statement's line."""
    line = first_statement_line(source)
    lines = source.splitlines(keepends=True)
    lines.insert(line - 1, f"raise RuntimeError({BROKEN!r})\n")
    return "".join(lines), line


def unchanged(source: str) -> str:
    return source + ("" if source.endswith("\n") else "\n") + UNCHANGED


class ProbeSpecialist(Specialist):
    """Proposes the two probes on the entry file, each once, against the campaign's root."""

    policy = "probe"

    def __init__(self, *, entry: str, **kwargs):
        super().__init__(max_in_flight=2, **kwargs)
        self.entry = entry
        self.todo = ["unchanged", "broken"]
        self.broken_line = 0

    async def propose(self, context: Context) -> Proposal | None:
        if not self.todo:
            return None
        probe = self.todo.pop(0)
        source = context.files[self.entry]
        if probe == "broken":
            text, self.broken_line = broken(source)
        else:
            text = unchanged(source)
        return Proposal(hypothesis=f"smoke probe {probe}", diff=diff_trees(context.files, {**context.files,
                                                                                            self.entry: text}))


# -- the recipe's own Python ----------------------------------------------------------------------


def imported_modules(source: str) -> set[str]:
    """The top-level modules a file imports, lazily too, except inside a try (an optional import)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def recipe_python(command: list[str]) -> str:
    """The interpreter the command runs the recipe with: `python` on PATH, or a launcher's (torchrun's)."""
    program = shutil.which(command[0].replace("{python}", sys.executable))
    if program is None:
        raise ValueError(f"{command[0]} is not on PATH: activate the recipe's environment first")
    first = Path(program).read_bytes()[:256].split(b"\n")[0]
    return first[2:].decode().strip() if first.startswith(b"#!") else program


def missing_modules(task: str, spec: TaskSpec) -> list[str]:
    """What the recipe imports that its Python cannot find: found before a run, not as its crash."""
    recipe = load_task(task).recipe_dir
    files = {p for pattern in spec.include or ["**/*.py"] for p in recipe.glob(pattern) if p.suffix == ".py"}
    local = {p.relative_to(recipe).parts[0].removesuffix(".py") for p in recipe.iterdir()}
    wanted = set().union(*(imported_modules(p.read_text()) for p in files)) - local - set(sys.stdlib_module_names)
    probe = ("import importlib.util, sys\n"
             "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))")
    found = subprocess.run([recipe_python(spec.command), "-c", probe, *sorted(wanted - {"__future__"})],
                           capture_output=True, text=True, timeout=120, check=True)
    return found.stdout.split()


# -- reading the outcome --------------------------------------------------------------------------


def seconds(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()


async def trial_records(bus: Bus, campaign: str) -> dict[str, dict]:
    """Per trial: how it was proposed, ran and ended, from the campaign's events in the stream."""
    records: dict[str, dict] = {}
    async for batch in bus.read(subject=subjects.of_campaign(campaign)):
        for message in batch:
            event = decode(message.data)
            trial = getattr(event, "trial_id", None)
            if trial is None:
                continue
            record = records.setdefault(trial, {"trial": trial, "outcomes": 0})
            at = seconds(event.occurred_at)
            if isinstance(event, TrialProposed):
                record.update(hypothesis=event.hypothesis, proposed_at=at)
            elif isinstance(event, TrialStarted):
                record.setdefault("started_at", at)
            elif isinstance(event, TrialFinished):
                record.update(finished_at=at, wall_s=event.wall_s, timed_out=event.timed_out,
                              log_bytes=event.log.size if event.log else 0,
                              artifact_bytes=event.artifact.size if event.artifact else 0)
            elif message.subject.endswith(".outcome"):
                record["outcomes"] += 1
                record.update(outcome_at=at, label=event.label, evidence=msgspec.to_builtins(event.evidence),
                              score=getattr(event, "score", None), metrics=getattr(event, "metrics", {}))
    for record in records.values():
        if {"proposed_at", "started_at", "outcome_at", "wall_s"} <= record.keys():
            record["queue_s"] = record["started_at"] - record["proposed_at"]
            record["overhead_s"] = record["outcome_at"] - record["started_at"] - record["wall_s"]
    return records


@dataclass
class Checks:
    results: list[dict]

    def check(self, name: str, ok: bool, detail: object = "") -> bool:
        self.results.append({"check": name, "ok": bool(ok), "detail": str(detail)[:2000]})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"), flush=True)
        return bool(ok)


def scored_from_log(record: dict, spec: TaskSpec) -> bool:
    """Its score was read from its log (it may still have failed a gate): a crash has no metrics."""
    return spec.metric in record.get("metrics", {})


# -- the GPUs -------------------------------------------------------------------------------------


def nvidia_smi(query: str, what: str = "--query-gpu") -> list[list[str]] | None:
    """nvidia-smi's CSV rows for the query; None on a host without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", f"{what}={query}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]


def gpu_memory() -> tuple[float, dict[str, float]] | None:
    """MiB used on all GPUs, and MiB by compute process."""
    used = nvidia_smi("memory.used")
    apps = nvidia_smi("pid,used_memory", "--query-compute-apps")
    if used is None or apps is None:
        return None
    return sum(float(row[0]) for row in used), {row[0]: float(row[1]) for row in apps if len(row) == 2}


# -- one task -------------------------------------------------------------------------------------


def arx(*args: str) -> str:
    done = subprocess.run([ARX, *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"arx {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


async def probes_campaign(task: str, args, checks: Checks) -> tuple[dict, TaskSpec]:
    spec = load_task(task).spec.shortened()
    missing = missing_modules(task, spec)
    if not checks.check("the recipe's Python has every module the recipe imports", not missing,
                        f"install {' '.join(missing)} where {recipe_python(spec.command)} finds them"):
        return {}, spec
    up = subprocess.run([str(ROOT / "scripts" / "up.sh"), "--task", task, "--trials", str(TRIALS), "--short",
                         "--devices", args.devices, "--detach"], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        raise RuntimeError(f"scripts/up.sh failed: {up.stdout[-2000:]}{up.stderr[-2000:]}")
    campaign = arx("campaign", "running", "--task", task)  # recorded with `spec`, the shortened one
    async with await Bus.connect(role="reader", name="arx-gpu-smoke") as bus:
        entry = entry_file(spec.command)
        surface = next(s.name for s in spec.surfaces if path_in(entry, s.paths))
        probe = ProbeSpecialist(specialist="smoke-probe", surface=surface, campaign_id=campaign, entry=entry)
        with anyio.fail_after(TRIALS * (spec.budgets.train_s + spec.budgets.eval_s) + 600):
            await probe.run()
        records = await trial_records(bus, campaign)
    check_probes(records, spec, entry, probe.broken_line, checks)
    return records, spec


def check_probes(records: dict, spec: TaskSpec, entry: str, broken_line: int, checks: Checks) -> None:
    checks.check("every trial has exactly one outcome", records and all(r["outcomes"] == 1 for r in records.values()),
                 {t: r["outcomes"] for t, r in records.items()})
    by_hypothesis = {r.get("hypothesis", ""): r for r in records.values()}
    baseline = records.get("baseline", {})
    checks.check("the baseline is scored from the official log lines", scored_from_log(baseline, spec),
                 baseline.get("evidence") or baseline.get("label"))
    same = by_hypothesis.get("smoke probe unchanged", {})
    checks.check("an edit that changes nothing is scored too", scored_from_log(same, spec),
                 same.get("evidence") or same.get("label"))
    crash = by_hypothesis.get("smoke probe broken", {})
    evidence = crash.get("evidence") or {}
    frame = (evidence.get("frame") or "").split(" in ")[0]
    path, _, line = frame.rpartition(":")
    checks.check("a broken edit is a crash at the line it broke",
                 crash.get("label") == "crash" and entry.endswith(path) and path and line == str(broken_line)
                 and BROKEN in (evidence.get("message") or ""), f"{crash.get('label')} {evidence}")


async def overrun_campaign(task: str, baseline_wall_s: float, checks: Checks) -> dict:
    """The baseline again with half its wall time: killed mid-run, labelled, its GPU memory freed."""
    train_s = round(max(MIN_OVERRUN_S, baseline_wall_s / 2), 1)
    before = gpu_memory()
    campaign = arx("campaign", "start", "--task", task, "--trials", "1", "--short", "--train-s", str(train_s))
    held = 0.0
    async with await Bus.connect(role="reader", name="arx-gpu-smoke") as bus:
        with anyio.fail_after(train_s + 900):
            while (record := (await trial_records(bus, campaign)).get("baseline", {})).get("outcomes", 0) == 0:
                if (now := gpu_memory()) is not None and before is not None:
                    held = max(held, sum(mib for pid, mib in now[1].items() if pid not in before[1]))
                await anyio.sleep(POLL_S)
    evidence = record.get("evidence") or {}
    checks.check("a run over its wall clock is train_budget_overrun at that budget",
                 record.get("label") == "train_budget_overrun" and evidence.get("gate") == "train_s"
                 and evidence.get("limit") == train_s, f"{record.get('label')} {evidence}")
    record.update(train_s=train_s, gpu_held_mib=held)
    if before is None:
        checks.results.append({"check": "GPU memory is freed after a killed trial", "ok": True,
                               "detail": "skipped: no nvidia-smi on this host"})
        return record
    left = await gpu_left(before)
    record["gpu_left_mib"] = left
    checks.check("GPU memory is freed after a killed trial", left[0] <= GPU_SLACK_MIB and not left[1],
                 f"{left[0]:.0f} MiB more in use than before, processes {left[1]} (held {held:.0f} MiB while running)")
    return record


async def gpu_left(before: tuple[float, dict[str, float]]) -> tuple[float, list[str]]:
    """MiB used beyond `before`, and the new compute processes, once they are gone or GPU_FREED_S passed."""
    deadline = time.monotonic() + GPU_FREED_S
    while True:
        used, apps = gpu_memory()
        left = used - before[0], sorted(set(apps) - set(before[1]))
        if (left[0] <= GPU_SLACK_MIB and not left[1]) or time.monotonic() > deadline:
            return left
        await anyio.sleep(POLL_S)


async def smoke(task: str, args) -> dict:
    print(f"{task}:", flush=True)
    checks = Checks([])
    report = {"task": task, "checks": checks.results}
    try:
        records, spec = await probes_campaign(task, args, checks)
        report["trials"] = list(records.values())
        if scored_from_log(records.get("baseline", {}), spec):
            report["overrun"] = await overrun_campaign(task, records["baseline"]["wall_s"], checks)
    except Exception as exc:  # the report says where it broke; the other tasks still run
        checks.check("the smoke run completes", False, f"{type(exc).__name__}: {exc}")
    return report


# -- the whole run --------------------------------------------------------------------------------


def use_smoke_data(task: str, out: Path) -> None:
    """Point the task at its stand-in data unless its variable already names a folder."""
    writer = load_task(task).smoke_data()
    if writer is not None and not os.environ.get(writer.FOLDER_VARIABLE):
        variable, folder = smoke_data.write(task, out)
        os.environ[variable] = str(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", action="append",
                        help="a task to run (repeatable; default: every task with smoke data)")
    parser.add_argument("--devices", default="auto", help="the executor's devices: auto (default), cpu, cuda:0,...")
    parser.add_argument("--out", type=Path,
                        help="where the report, the data and ARX_HOME go (default: a new temp folder)")
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="arx-gpu-smoke-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(ARX_HOME=str(out / "home"), NATS_URL=f"nats://127.0.0.1:{free_port()}")
    tasks = args.task or smoke_data.smoke_tasks()
    try:
        parse_devices(args.devices)
        for task in tasks:
            load_task(task).spec.shortened()
    except ValueError as exc:
        parser.error(str(exc))
    gpus = nvidia_smi("name")
    reports = []
    try:
        for task in tasks:
            use_smoke_data(task, out / "data")
            reports.append(anyio.run(smoke, task, args))
    finally:
        subprocess.run([str(ROOT / "scripts" / "down.sh")], capture_output=True, timeout=300)
    summary = {"gpus": [row[0] for row in gpus or []], "devices": args.devices, "tasks": reports}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    failed = [f"{r['task']}: {c['check']}" for r in reports for c in r["checks"] if not c["ok"]]
    print(f"report: {out / 'report.json'}" + (f"\nfailed: {'; '.join(failed)}" if failed else "\nall checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
