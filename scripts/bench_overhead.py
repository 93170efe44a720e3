"""Per-trial orchestration overhead of the loop on digits-speedrun, written into BENCHMARKS.md.

    .venv/bin/python scripts/bench_overhead.py [--trials 12]

A private cluster (nats-server, evaluator, one executor, one TPE specialist with one trial in flight,
so the executor is idle whenever a proposal arrives) runs a campaign. From the lineage it reports,
median and p95: TrialProposed -> TrialStarted (queue pickup) and TrialFinished -> TrialScored
(artifact upload, fetch, sandboxed scoring, labelling), all timestamps taken on this one host.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.bench import report  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.local import LocalServer, Roles  # noqa: E402
from bus.settings import load_settings  # noqa: E402
from projections import views  # noqa: E402
from projections.follow import catch_up  # noqa: E402
from projections.lineage import Lineage  # noqa: E402

SECTION = "Orchestration overhead per trial"
CAMPAIGN = "overhead"


def seconds(a: str, b: str) -> float:
    return (dt.datetime.fromisoformat(b) - dt.datetime.fromisoformat(a)).total_seconds()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


async def finished_lineage(settings, roles: Roles, timeout_s: float, campaign: str = CAMPAIGN) -> Lineage:
    """The campaign's lineage once it stopped with nothing in flight; fails fast if a role dies."""
    deadline = time.monotonic() + timeout_s
    async with await Bus.connect(settings, role="admin", name="bench-overhead") as bus:
        lineage = Lineage()
        while time.monotonic() < deadline:
            await catch_up(bus, lineage)
            summary = views.summary(lineage, campaign)
            if summary and summary["stopped"] and summary["in_flight"] == 0:
                return lineage
            if failed := roles.failed():
                raise RuntimeError(f"{failed[0]} failed: {roles.log(failed[0])[-2000:]}")
            await asyncio.sleep(1.0)
    raise TimeoutError(f"the campaign did not finish within {timeout_s:.0f}s")


def measure(trials: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="arx-overhead-") as tmp:
        root = Path(tmp)
        server = LocalServer(root / "nats", home=root / "home").start()
        env = {**os.environ, "NATS_URL": server.url, "ARX_HOME": str(root / "home")}
        roles = Roles(env, root / "logs")
        try:
            roles.start("evaluator", "evaluator", "--name", "evaluator-1")
            roles.start("executor", "executor", "--name", "executor-1")
            roles.command("campaign", "start", "--task", "digits-speedrun", "--trials", str(trials),
                          "--campaign", CAMPAIGN)
            roles.start("agent", "agent", "--policy", "tpe", "--specialist", "tpe-optimizer",
                        "--surface", "optimizer", "--campaign", CAMPAIGN)
            lineage = asyncio.run(finished_lineage(load_settings(env), roles, timeout_s=trials * 90))
        finally:
            roles.stop_all()
            server.kill()
    rows = lineage.query(
        "SELECT proposed_at, started_at, finished_at, outcome_at, wall_s, parent_id FROM trials"
        " WHERE campaign_id = ? AND outcome = 'TrialScored' AND attempts = 1 ORDER BY started_at",
        (CAMPAIGN,),
    )
    # Pickup counts from when the trial could start: its proposal, or the end of the run before it on
    # the one executor (a trial proposed while another runs waits for it: that is the queue, not
    # overhead). The baseline is left out: `campaign start` queues it while the roles may still start.
    # Event times are ISO 8601 in UTC with microseconds, so the later one is the larger string.
    pickup = [
        seconds(max(r["proposed_at"], before["finished_at"]), r["started_at"])
        for before, r in zip(rows, rows[1:])
    ]
    rows = rows[1:]
    scoring = [seconds(r["finished_at"], r["outcome_at"]) for r in rows]
    overhead = statistics.median(pickup) + statistics.median(scoring)
    return {
        "trials": len(rows),
        "pickup_median": statistics.median(pickup),
        "pickup_p95": p95(pickup),
        "scoring_median": statistics.median(scoring),
        "scoring_p95": p95(scoring),
        "busy_3s": 3.0 / (3.0 + overhead),
        "load": os.getloadavg()[0],
    }


def section(result: dict, command: str) -> str:
    return "\n".join([
        f"## {SECTION}",
        "",
        f"`{command}` (2-core machine, load average {result['load']:.1f} at the end)",
        "",
        f"{result['trials']} scored digits-speedrun trials after the baseline, one executor, one specialist with",
        "one trial in flight (the baseline is left out: it is queued while the roles are still starting).",
        "Pickup counts from when the executor could take the trial: its proposal, or the end of the run",
        "before it (the specialist proposes its first trial while the baseline runs).",
        "",
        "| step | median | p95 | target |",
        "|---|---|---|---|",
        f"| TrialProposed -> TrialStarted | {result['pickup_median']:.3f} s | {result['pickup_p95']:.3f} s | < 0.5 s |",
        f"| TrialFinished -> TrialScored | {result['scoring_median']:.3f} s | {result['scoring_p95']:.3f} s | < 0.5 s |",
        "",
        f"A 3-second trial would keep an executor busy {result['busy_3s']:.0%} of the time "
        "(3 s / (3 s + both median overheads)).",
        "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    result = measure(args.trials)
    text = section(result, f"python scripts/bench_overhead.py --trials {args.trials}")
    report(SECTION, text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
