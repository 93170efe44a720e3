"""How the loop scales with executors and evaluators, on one node and on a 3-node cluster, written into
BENCHMARKS.md.

    .venv/bin/python scripts/bench_scale.py [--trials 40] [--executors 1,2,4,8] [--evaluators 1,2]

Each run is a private cluster (one nats-server, or three routed into a JetStream cluster with R3
streams) with E executor and V evaluator processes and one TPE specialist that keeps E trials in
flight, on the `tiny` test task (a trial is a Python process that writes one number: a few hundred
milliseconds with the sandbox). From the lineage, after the baseline: trials per minute, the executors'
busy fraction (run time over E x the campaign's span), and the orchestration overhead per trial,
median and p95: TrialProposed -> TrialStarted (queue pickup; a proposal comes only once an executor is
free) and TrialFinished -> TrialScored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.bench import report  # noqa: E402
from bus.local import ROOT, LocalCluster, LocalServer, Roles  # noqa: E402
from bus.settings import load_settings  # noqa: E402
from scripts.bench_overhead import finished_lineage, p95, seconds  # noqa: E402

SECTION = "Scaling with executors and evaluators"
CAMPAIGN = "scale"


def run(trials: int, executors: int, evaluators: int, nodes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="arx-scale-") as tmp:
        root = Path(tmp)
        home = root / "home"
        servers = (LocalCluster(root / "nats", home=home, size=nodes) if nodes > 1
                   else LocalServer(root / "nats", home=home)).start()
        env = {**os.environ, "NATS_URL": servers.url, "ARX_HOME": str(home),
               "ARX_TASKS_PATH": str(ROOT / "tests" / "tasks")}
        roles = Roles(env, root / "logs")
        try:
            for i in range(evaluators):
                roles.start(f"evaluator-{i}", "evaluator", "--name", f"evaluator-{i}")
            for i in range(executors):
                roles.start(f"executor-{i}", "executor", "--name", f"executor-{i}")
            roles.command("campaign", "start", "--task", "tiny", "--trials", str(trials), "--campaign", CAMPAIGN)
            roles.start("agent", "agent", "--policy", "tpe", "--specialist", "tpe-main", "--surface", "main",
                        "--campaign", CAMPAIGN, "--max-in-flight", str(executors))
            lineage = asyncio.run(finished_lineage(load_settings(env), roles, trials * 10.0, CAMPAIGN))
        finally:
            roles.stop_all()
            servers.kill()
    rows = lineage.query(
        "SELECT proposed_at, started_at, finished_at, outcome_at FROM trials WHERE campaign_id = ?"
        " AND outcome = 'TrialScored' AND attempts = 1 AND trial_id != 'baseline' ORDER BY started_at",
        (CAMPAIGN,),
    )
    span = seconds(min(r["started_at"] for r in rows), max(r["outcome_at"] for r in rows))
    running = sum(seconds(r["started_at"], r["finished_at"]) for r in rows)
    pickup = [seconds(r["proposed_at"], r["started_at"]) for r in rows]
    scoring = [seconds(r["finished_at"], r["outcome_at"]) for r in rows]
    return {
        "nodes": nodes, "executors": executors, "evaluators": evaluators, "trials": len(rows),
        "per_minute": 60 * len(rows) / span, "busy": running / (executors * span),
        "pickup": (statistics.median(pickup), p95(pickup)), "scoring": (statistics.median(scoring), p95(scoring)),
    }


READING = """Every executor, evaluator, specialist and nats-server of a run shares this machine's cores, so the
throughput stops growing once the executors fill them, and past that more executors only stretch the
scoring step (the evaluator waits for a core); a second evaluator shortens that wait. The
specialist proposes a trial only once one of its E in flight is scored, so an executor idles while
the trial it ran is scored: the busy fraction falls as scoring slows. The 3-node cluster replicates every write to two more
nats-server processes on the same cores."""


def section(results: list[dict], command: str) -> str:
    lines = [
        f"## {SECTION}", "",
        f"`{command}` ({os.cpu_count()}-core machine; every process on it, so the cores fill up early)", "",
        "| nodes | executors | evaluators | trials | trials/min | executor busy | proposed -> started median / p95 |"
        " finished -> scored median / p95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['nodes']} | {r['executors']} | {r['evaluators']} | {r['trials']} | {r['per_minute']:.0f} |"
            f" {r['busy']:.0%} | {r['pickup'][0] * 1000:.0f} / {r['pickup'][1] * 1000:.0f} ms |"
            f" {r['scoring'][0] * 1000:.0f} / {r['scoring'][1] * 1000:.0f} ms |"
        )
    return "\n".join([*lines, "", READING, ""])


def counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--executors", type=counts, default=[1, 2, 4, 8])
    parser.add_argument("--evaluators", type=counts, default=[1, 2])
    parser.add_argument("--nodes", type=counts, default=[1, 3])
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    results = []
    for nodes in args.nodes:
        for evaluators in args.evaluators:
            for executors in args.executors:
                results.append(run(args.trials, executors, evaluators, nodes))
                print(section(results[-1:], "").splitlines()[-1], flush=True)
    command = "python scripts/bench_scale.py " + " ".join(
        f"--{name} {','.join(map(str, getattr(args, name)))}" for name in ("executors", "evaluators", "nodes")
    ) + f" --trials {args.trials}"
    text = section(results, command)
    report(SECTION, text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
