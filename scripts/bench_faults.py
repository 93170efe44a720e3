"""Fault injection: a digits-speedrun campaign that loses processes and its nats-server on the way.

    .venv/bin/python scripts/bench_faults.py [--trials 12] [--seed 0] [--kill-every 3 10] [--timeout 900]
                                             [--work DIR] [--write]

A private cluster (nats-server, projector, two evaluators, two executors and the lineage roster's
offline agents, each an OS process) runs a campaign. Every few seconds (seeded) one of them is killed
with SIGKILL and started again under the same name and arguments; the nats-server comes back on its
port and store. Once the campaign has stopped with nothing in flight, the log must show that nothing
was lost: every proposal has exactly one outcome, every cause and every finish of a scored trial is
in the log, the stream has no gap, the live projection equals a fresh replay and the budget was spent.
Exits non-zero when any of that fails; the work dir with every role's log is then kept.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.arms import roster  # noqa: E402
from agents.bench import report  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.eventfile import read_lines  # noqa: E402
from bus.events import (  # noqa: E402
    OUTCOME_TYPES,
    CampaignStarted,
    CampaignStopped,
    Event,
    TrialFinished,
    TrialProposed,
    TrialRejected,
    TrialScored,
    decode,
)
from bus.local import LocalServer, Roles  # noqa: E402
from bus.settings import load_settings  # noqa: E402
from evaluators.spec import load_task  # noqa: E402
from projections.lineage import Lineage  # noqa: E402
from tests.projection_events import dump  # noqa: E402

SECTION = "Fault injection"
TASK = "digits-speedrun"
KINDS = ("nats-server", "executor", "evaluator", "projector", "agent")
HARNESS_FAULTS = {"harness_abort"}  # labels the harness writes when it could not run or judge a trial
POLL_S = 3.0
STATUS_TIMEOUT_S = 90
PROJECTOR_CATCH_UP_S = 60.0
PAUSE_S = (0.5, 2.0)  # how long a killed process stays down


@dataclass
class Cluster:
    """The private cluster, and how to start each role again: its kind and its arx arguments."""

    root: Path
    server: LocalServer
    roles: Roles
    kinds: dict[str, str] = field(default_factory=dict)
    argv: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    def start(self, name: str, kind: str, *args: str) -> None:
        self.kinds[name], self.argv[name] = kind, args
        self.roles.start(name, *args)

    def alive(self, kind: str) -> list[str]:
        return sorted(n for n, k in self.kinds.items() if k == kind and self.roles.procs[n].poll() is None)


def start_cluster(root: Path, campaign: str, seed: int) -> Cluster:
    server = LocalServer(root / "nats", home=root / "home").start()
    env = {**os.environ, "NATS_URL": server.url, "ARX_HOME": str(root / "home")}
    cluster = Cluster(root, server, Roles(env, root / "logs", cwd=root))
    cluster.start("projector", "projector", "projector")
    for i in (1, 2):
        cluster.start(f"evaluator-{i}", "evaluator", "evaluator", "--name", f"evaluator-{i}")
        cluster.start(f"executor-{i}", "executor", "executor", "--name", f"executor-{i}")
    # As in `arx bench research`: the agents wait for their campaign, each with a seed of its own.
    for i, member in enumerate(roster(load_task(TASK).spec, "lineage")):
        cluster.start(
            member.specialist, "agent", "agent", "--policy", member.policy, "--specialist", member.specialist,
            "--surface", member.surface, "--campaign", campaign, "--seed", str(seed * 100 + i),
        )
    return cluster


def kill_one(cluster: Cluster, rng: random.Random) -> str:
    """SIGKILL one process of a kind drawn at random, and start it again as it was; returns the kind."""
    kind = rng.choice([k for k in KINDS if k == "nats-server" or cluster.alive(k)])
    pause = rng.uniform(*PAUSE_S)
    if kind == "nats-server":
        cluster.server.kill()
        time.sleep(pause)
        cluster.server.start()
        log(f"killed nats-server, back after {pause:.1f}s")
        return kind
    name = rng.choice(cluster.alive(kind))
    cluster.roles.kill(name)
    time.sleep(pause)
    cluster.roles.start(name, *cluster.argv[name])
    log(f"killed {name}, back after {pause:.1f}s")
    return kind


def campaign_status(roles: Roles, campaign: str) -> dict | None:
    """`arx status --json`, or None while it cannot be read (the server restarting, the campaign not yet in the log)."""
    try:
        done = roles.run("status", "--json", "--campaign", campaign, timeout=STATUS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    return json.loads(done.stdout) if done.returncode == 0 else None


def finished(summary: dict | None) -> bool:
    return summary is not None and summary["stopped"] and summary["in_flight"] == 0


def run_campaign(cluster: Cluster, campaign: str, args, rng: random.Random) -> tuple[Counter, dict | None, list[str]]:
    """Start the campaign and kill processes until it stops (or half the timeout has passed, so that the
    loop gets the rest to finish undisturbed); returns the kills per kind, the last status and the roles
    that failed on their own."""
    cluster.roles.command("campaign", "start", "--task", TASK, "--trials", str(args.trials), "--campaign", campaign)
    began = time.monotonic()
    deadline, inject_until = began + args.timeout, began + args.timeout / 2
    next_kill = began + rng.uniform(*args.kill_every)
    kills: Counter = Counter()
    failed: dict[str, str] = {}
    summary, injecting = None, True
    while not finished(summary) and time.monotonic() < deadline:
        # Caught before a kill: killing a role forgets how it exited.
        failed.update((name, cluster.roles.log(name)[-2000:]) for name in cluster.roles.failed())
        injecting = injecting and not (summary and summary["stopped"]) and time.monotonic() < inject_until
        if injecting and time.monotonic() >= next_kill:
            kills[kill_one(cluster, rng)] += 1
            next_kill = time.monotonic() + rng.uniform(*args.kill_every)
        time.sleep(max(0.0, min(POLL_S, next_kill - time.monotonic())) if injecting else POLL_S)
        summary = campaign_status(cluster.roles, campaign) or summary
    failed.update((name, cluster.roles.log(name)[-2000:]) for name in cluster.roles.failed())
    for name, tail in failed.items():
        log(f"{name} exited with an error:\n{tail}")
    return kills, summary, sorted(failed)


def projected_seq(path: Path) -> int:
    """The projector's checkpoint; 0 while its file cannot be read (not made yet, or locked by a write)."""
    try:
        lineage = Lineage(path, readonly=True)
    except sqlite3.OperationalError:
        return 0
    try:
        return lineage.checkpoint
    except sqlite3.OperationalError:
        return 0
    finally:
        lineage.close()


def wait_projected(path: Path, last_seq: int) -> int:
    """The projector's checkpoint once it reached last_seq, or where it stood after PROJECTOR_CATCH_UP_S."""
    deadline = time.monotonic() + PROJECTOR_CATCH_UP_S
    while (checkpoint := projected_seq(path)) < last_seq and time.monotonic() < deadline:
        time.sleep(0.5)
    return checkpoint


async def stream_state(settings):
    async with await Bus.connect(settings, role="reader", name="bench-faults") as bus:
        return (await bus.js.stream_info(bus.settings.stream)).state


def read_export(roles: Roles, campaign: str, path: Path) -> list[Event]:
    roles.command("export", "--campaign", campaign, str(path))
    return [decode(data) for _, data in read_lines(path)]


def unmatched_outcomes(events: list[Event]) -> list[str]:
    """Proposals without exactly one outcome, and outcomes without a proposal."""
    proposed = {e.trial_id for e in events if isinstance(e, TrialProposed)}
    outcomes = Counter(e.trial_id for e in events if isinstance(e, OUTCOME_TYPES))
    problems = [f"trial {t}: {outcomes[t]} outcomes" for t in sorted(proposed) if outcomes[t] != 1]
    return problems + [f"trial {t}: an outcome without a proposal" for t in sorted(outcomes.keys() - proposed)]


def missing_events(events: list[Event], state) -> list[str]:
    """Events the log should hold and does not: a cause, the finish of a scored trial, a stream sequence."""
    ids = {e.event_id for e in events}
    problems = [
        f"{e.event_id}: its cause {e.causation_id} is not in the log"
        for e in events if e.causation_id and e.causation_id not in ids
    ]
    ran = {e.trial_id for e in events if isinstance(e, TrialFinished)}
    problems += [
        f"trial {e.trial_id}: scored {e.label} without a TrialFinished"
        for e in events if isinstance(e, TrialScored) and e.label not in HARNESS_FAULTS and e.trial_id not in ran
    ]
    if state.first_seq != 1 or state.messages != state.last_seq:
        problems.append(f"stream holds {state.messages} messages in sequences {state.first_seq}..{state.last_seq}")
    # The stream holds this one campaign: its export must be all of it.
    if len(events) != state.messages:
        problems.append(f"the export has {len(events)} events, the stream {state.messages}")
    return problems


def projection_mismatch(live: Path, replayed: Path, checkpoint: int, last_seq: int) -> list[str]:
    """Every line of one dump that the other lacks (nothing ignored), and a projector that lagged."""
    a, b = dump(live), dump(replayed)
    in_a, in_b = set(a), set(b)
    problems = [f"live only: {line}" for line in a if line not in in_b]
    problems += [f"replay only: {line}" for line in b if line not in in_a]
    if a != b and not problems:
        problems.append("the same rows, inserted in another order")
    if checkpoint < last_seq:
        problems.append(f"the projector stood at seq {checkpoint} of {last_seq} after {PROJECTOR_CATCH_UP_S:.0f}s")
    return problems


def budget_problems(events: list[Event], summary: dict | None) -> list[str]:
    """The campaign must have spent its budget (scored or rejected trials, as the evaluator counts) and stopped."""
    started = [e for e in events if isinstance(e, CampaignStarted)]
    stops = [e for e in events if isinstance(e, CampaignStopped)]
    counted = sum(isinstance(e, (TrialScored, TrialRejected)) for e in events)
    problems = [] if finished(summary) else [f"the campaign did not stop with nothing in flight: {summary}"]
    if not started or counted < started[0].max_trials:
        problems.append(f"{counted} counted outcomes of {started[0].max_trials if started else '?'}")
    if not stops or not stops[0].reason:
        problems.append("no CampaignStopped with a reason")
    return problems


@dataclass
class Result:
    kills: Counter
    failed_roles: list[str]
    checks: dict[str, list[str]]  # what was lost, per check: one line per problem
    labels: dict[str, int]
    wall_s: float

    @property
    def ok(self) -> bool:
        return not self.failed_roles and not any(self.checks.values())


def verify(cluster: Cluster, campaign: str, summary: dict | None) -> dict[str, list[str]]:
    """Stop the roles once the projector has read the whole log, then hold the log and both projections
    against each other."""
    state = asyncio.run(stream_state(load_settings(cluster.roles.env)))
    live = cluster.home / "lineage.db"
    checkpoint = wait_projected(live, state.last_seq)
    cluster.roles.stop_all()  # SIGTERM: the projector closes its file cleanly
    state = asyncio.run(stream_state(load_settings(cluster.roles.env)))
    events = read_export(cluster.roles, campaign, cluster.root / "export.jsonl")
    replayed = cluster.root / "replay.db"
    cluster.roles.command("replay", "--db", str(replayed))
    return {
        "proposals without exactly one outcome": unmatched_outcomes(events),
        "missing events (a cause, a finish, a stream sequence)": missing_events(events, state),
        "projection lines that differ from a fresh replay": projection_mismatch(
            live, replayed, checkpoint, state.last_seq),
        "budget not spent, or no stop with a reason": budget_problems(events, summary),
    }


def run(args, root: Path) -> Result:
    campaign = f"faults-{args.seed}"
    rng = random.Random(args.seed)
    cluster = start_cluster(root, campaign, args.seed)
    began = time.monotonic()
    try:
        kills, summary, failed_roles = run_campaign(cluster, campaign, args, rng)
        checks = verify(cluster, campaign, summary)
    finally:
        cluster.roles.stop_all()
        cluster.server.kill()
    labels = summary["labels"] if summary else {}
    return Result(kills, failed_roles, checks, labels, round(time.monotonic() - began, 1))


def table(result: Result) -> list[str]:
    lines = ["| killed (SIGKILL, then restarted) | times |", "|---|---|"]
    lines += [f"| {kind} | {result.kills[kind]} |" for kind in KINDS]
    lines += [f"| all | {sum(result.kills.values())} |", "", "| lost | count | target |", "|---|---|---|"]
    lines += [f"| {check} | {len(problems)} | 0 |" for check, problems in result.checks.items()]
    lines.append(f"| roles that exited with an error unkilled | {len(result.failed_roles)} | 0 |")
    return lines


def problem_lines(result: Result) -> list[str]:
    lines = [f"- role {name} exited with an error" for name in result.failed_roles]
    for check, found in result.checks.items():
        lines += [f"- {check}: {problem}" for problem in found[:20]]
    return lines


def section(result: Result, command: str) -> str:
    labels = ", ".join(f"{label} {n}" for label, n in sorted(result.labels.items()))
    verdict = "nothing lost." if result.ok else "FAILED:"
    return "\n".join([
        f"## {SECTION}",
        "",
        f"`{command}` ({dt.date.today().isoformat()}, 2-core CI-class machine)",
        "",
        f"A {TASK} campaign on a private cluster (nats-server, projector, two evaluators, two executors,",
        "the lineage roster's offline agents, each an OS process). At seeded random moments one of them was",
        "killed with SIGKILL and started again under the same name and arguments (the nats-server on its port",
        "and store). Afterwards the exported log, the stream and the projections were checked; the live",
        "projection is compared line by line with `arx replay`, nothing ignored.",
        "",
        *table(result),
        "",
        f"Campaign: {labels or 'no labels'}, {result.wall_s:.0f} s wall. Result: {verdict}",
        *problem_lines(result),
        "",
    ])


def log(message: str) -> None:
    sys.stderr.write(f"bench faults: {message}\n")
    sys.stderr.flush()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(3.0, 10.0), metavar=("MIN", "MAX"),
                        help="seconds between two kills, drawn uniformly")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole campaign")
    parser.add_argument("--work", type=Path, help="work dir (default: a temporary one, kept on failure)")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="arx-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, root)
    except BaseException:
        log(f"the work dir is kept in {root}")
        raise
    command = [os.path.relpath(sys.executable, ROOT), "scripts/bench_faults.py", *sys.argv[1:]]
    text = section(result, shlex.join(command))
    report(SECTION, text, write=args.write)
    if not result.ok:
        log(f"the work dir is kept in {root}")
        return 1
    if args.work is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
