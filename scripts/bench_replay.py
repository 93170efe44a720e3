"""`arx replay` against its floor, written into BENCHMARKS.md.

    .venv/bin/python scripts/bench_replay.py [--log pg_main] [--events 180014] [--rounds 3] [--rss-events 1000000]

The log: a seed release's run (--log pg_main, from ../shared/seed-runs) with its trials repeated under
new ids until it has --events events (180,014: pg_main's 900 trials 100 times), or --log synthetic, a
campaign of realistic sizes (hypotheses, diffs and log tails as long as real ones, a dozen trials
interleaved). It is published to a fresh nats-server and exported to an event file. Then, in rounds:
the floor (msgspec decode of every event, and the rows the replay built written as the replay writes
them, into a fresh file), and `arx replay` from the stream and `arx replay --from-file`, each run as a
whole process, in events/s and peak RSS, with the load average of this (shared) machine. Last, one
`arx replay --from-file` of a log of --rss-events events, for its peak RSS.
Exits 1 when a replay's median is under 100,000 events/s or under half of the floor's median.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.bench import report  # noqa: E402
from bus.argtypes import positive_int  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.eventfile import export_campaign, read_lines  # noqa: E402
from bus.events import (  # noqa: E402
    AnyEvent,
    CampaignStarted,
    CampaignStopped,
    Event,
    Evidence,
    GateVerdict,
    ObjectRef,
    SpecialistJoined,
    TrialAbandoned,
    TrialFinished,
    TrialProposed,
    TrialRejected,
    TrialScored,
    TrialStarted,
    encode,
)
from bus.local import LocalServer  # noqa: E402
from projections.lineage import IN_MEMORY_BYTES, Lineage, drop_indexes  # noqa: E402
from projections.seedruns import tsv_events  # noqa: E402

SECTION = "Replay"
TARGET = 100_000  # events/s of a whole `arx replay` process
FLOOR_SHARE = 0.5  # ... and at least this share of the floor's events/s
SEED_RUNS = ROOT.parent / "shared" / "seed-runs"
C = "bench"
SPECIALISTS = ("optimizer", "architecture", "data", "schedule", "regularization", "export")
# (label, share): a keep-poor, failure-rich campaign like the seed paper's.
OUTCOMES = (
    ("keep", 0.03), ("discard", 0.45), ("within_noise", 0.15), ("crash", 0.10), ("invalid_edit", 0.05),
    ("size_blocked", 0.07), ("disqualified", 0.05), ("train_budget_overrun", 0.05), ("harness_abort", 0.05),
)
IN_FLIGHT = 12  # trials whose events interleave in the log, as with a dozen executors
WORDS = "raise lower the learning rate momentum warmup schedule width depth quantize prune batch epochs".split()
TIME = "2026-01-01T00:00:00.000000Z"


class Prose:
    """Random slices of one long text of words: as long as real fields, cheap to make 100,000 times."""

    def __init__(self, rng: random.Random, chars: int = 200_000):
        self.rng = rng
        self.text = " ".join(rng.choice(WORDS) for _ in range(chars // 6))

    def __call__(self, low: int, high: int) -> str:
        chars = self.rng.randint(low, high)
        start = self.rng.randrange(len(self.text) - chars)
        return self.text[start : start + chars]


def _trial_events(i: int, rng: random.Random, words: Prose, best: str) -> tuple[list[Event], str]:
    """One trial's events in the order its roles log them, and the best trial after it."""
    trial = f"t{i:07d}"
    label = "keep" if i == 0 else rng.choices(*zip(*OUTCOMES))[0]
    specialist = SPECIALISTS[i % len(SPECIALISTS)]
    common = {"campaign_id": C, "trial_id": trial, "occurred_at": TIME}
    events: list[Event] = [TrialProposed(
        producer=specialist, specialist=specialist, surface=specialist,
        parent_id=None if i == 0 else best, hypothesis=words(150, 400), diff=words(300, 2000),
        expected_delta=-0.01, shown_ids=[f"t{rng.randrange(i + 1):07d}" for _ in range(8)],
        params={"LR": rng.random(), "WARMUP": float(rng.randrange(10))}, policy="llm", model="gpt-x",
        tokens_in=rng.randrange(2000, 9000), tokens_out=rng.randrange(200, 900), latency_s=rng.random() * 20,
        cost_usd=rng.random() / 100, **common,
    )]
    if label == "invalid_edit":
        events.append(TrialRejected(
            evidence=Evidence(stage="apply", message=words(40, 200)), **common,
        ))
        return events, best
    events.append(TrialStarted(executor="executor-1", **common))
    if label == "harness_abort":
        events.append(TrialStarted(executor="executor-2", attempt=2, **common))
        events.append(TrialAbandoned(
            evidence=Evidence(stage="execute", message="delivered 3 times"), **common,
        ))
        return events, best
    failed = label not in ("keep", "discard", "within_noise")
    events.append(TrialFinished(
        executor="executor-1", commit="ab" * 20, exit_code=1 if label == "crash" else 0,
        wall_s=rng.random() * 60, cpu_s=rng.random() * 60, peak_rss_mb=300 + rng.random() * 100,
        limits={"train_s": 60.0, "memory_mb": 4096.0}, log_tail=words(1000, 4000) if failed else words(200, 800),
        **common,
    ))
    score = None if label == "crash" else 10.0 * (1 + rng.uniform(-0.02, 0.05))
    events.append(TrialScored(
        label=label, score=score,
        metrics={} if score is None else {"accuracy": 0.97, "seeds": 3.0, "size_mb": 12.5},
        gates=[GateVerdict(gate=g, passed=not failed, measured=1.0, limit=1.0) for g in ("accuracy", "seeds", "size")],
        incumbent_id=best, incumbent_score=10.0, noise=0.03,
        evidence=Evidence(stage="train", message=words(100, 400), frame="train.py:88") if failed else Evidence(),
        **common,
    ))
    return events, trial if label == "keep" else best


def campaign_log(events: int, seed: int = 0) -> list[Event]:
    """A campaign of about `events` events: its start, its specialists, interleaved trials, its stop."""
    rng = random.Random(seed)
    words = Prose(rng)
    log: list[Event] = [CampaignStarted(
        campaign_id=C, occurred_at=TIME, task="digits-speedrun", metric="train_s",
        direction="min", max_trials=events, bundle=ObjectRef(name="bundles/bench.tar.gz", size=1, sha256="0" * 64),
        noise=0.03, spec={"name": "digits-speedrun", "description": words(300, 300)},
    )]
    log += [
        SpecialistJoined(campaign_id=C, occurred_at=TIME, specialist=name,
                         surface=name, policy="llm")
        for name in SPECIALISTS
    ]
    running: list[list[Event]] = []
    best, i = "t0000000", 0
    while len(log) < events - 1 or running:
        while len(running) < IN_FLIGHT and len(log) + sum(map(len, running)) < events - 1:
            trial, best = _trial_events(i, rng, words, best)
            running.append(trial)
            i += 1
        pick = rng.randrange(len(running))
        log.append(running[pick].pop(0))
        if not running[pick]:
            running.pop(pick)
    log.append(CampaignStopped(campaign_id=C, occurred_at=TIME, reason="budget", trials=i))
    return log


def seed_log(run: str, events: int) -> list[Event]:
    """A seed release's run of `events` events: its start and specialists, its baseline, then its other
    trials over and over, each copy under new ids, and its stop."""
    log = tsv_events(SEED_RUNS / run / "results.tsv", run).events
    first = next(i for i, event in enumerate(log) if isinstance(event, TrialProposed))
    head, trials, stop = log[:first], log[first:-1], log[-1]
    root = trials[0].trial_id  # the baseline: every copy builds on it
    baseline = [event for event in trials if event.trial_id == root]
    rest = [event for event in trials if event.trial_id != root]
    copies = events - len(head) - len(baseline) - 1
    return [*head, *baseline, *(_copy(rest[n % len(rest)], n // len(rest), root) for n in range(copies)), stop]


def _copy(event: Event, k: int, root: str) -> Event:
    """A trial's event in the k-th copy of its trial (0: the event itself): every trial id in it but
    the root's takes the suffix _k, in its event ids too (JetStream drops a repeated id)."""
    if k == 0:
        return event

    def new(trial: str | None) -> str | None:
        return trial if trial in (None, root) else f"{trial}_{k}"

    def moved(event_id: str | None) -> str | None:
        return event_id and event_id.replace(f".{event.trial_id}.", f".{new(event.trial_id)}.")

    changes = {"trial_id": new(event.trial_id), "event_id": moved(event.event_id),
               "causation_id": moved(event.causation_id)}
    if isinstance(event, TrialProposed):
        changes.update(parent_id=new(event.parent_id), shown_ids=[new(t) for t in event.shown_ids])
    elif isinstance(event, TrialScored):
        changes.update(incumbent_id=new(event.incumbent_id))
    return msgspec.structs.replace(event, **changes)


LOGS = {"synthetic": campaign_log, "pg_main": lambda events: seed_log("pg_main", events)}


# -- measuring ------------------------------------------------------------------------------------


async def publish(bus: Bus, log: list[Event], window: int = 2000) -> None:
    """Publish with Nats-Msg-Id as every producer does, `window` acks in flight at a time."""
    for i in range(0, len(log), window):
        acks = [
            await bus.js.publish_async(e.subject, encode(e), headers={"Nats-Msg-Id": e.event_id})
            for e in log[i : i + window]
        ]
        await asyncio.wait_for(asyncio.gather(*acks), 60)


def rows_of(path: Path) -> dict[str, tuple[int, list[tuple]]]:
    """Every table's rows (and column count) in a lineage file."""
    conn = sqlite3.connect(path)
    try:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: (len(c.description), c.fetchall()) for t in tables for c in [conn.execute(f'SELECT * FROM "{t}"')]}
    finally:
        conn.close()


def floor(lines: list[bytes], rows: dict[str, tuple[int, list[tuple]]], path: Path) -> None:
    """Decode every event with msgspec and write the same rows as a replay writes them: one executemany
    per table, the secondary indexes made after the rows."""
    decoder = msgspec.json.Decoder(AnyEvent)
    for line in lines:
        decoder.decode(line)
    lineage = Lineage(path, durable=False)
    conn = lineage.db.conn
    with conn:
        indexes = drop_indexes(conn)
        for table, (width, values) in rows.items():
            conn.executemany(f'INSERT INTO "{table}" VALUES ({",".join("?" * width)})', values)
        for sql in indexes:
            conn.execute(sql)
    lineage.close()


class Rate(msgspec.Struct):
    """Events per second of wall-clock time, and per second of CPU time (of the process that did the
    work and, for a replay from the stream, nats-server's): the second depends less on the other work
    on the machine."""

    wall: float
    cpu: float


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user and system) used so far by this process, or by process `pid`."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(events: int, run: Callable[[], object]) -> Rate:
    gc.collect()
    wall, cpu = time.perf_counter(), cpu_seconds()
    run()
    return Rate(wall=events / (time.perf_counter() - wall), cpu=events / (cpu_seconds() - cpu))


class Run(msgspec.Struct):
    rate: Rate
    peak_rss_mib: float


# Runs argv[2:] as its child and writes the child's wall-clock seconds, CPU seconds and peak RSS (KiB)
# to argv[1]. Linux carries a process's peak RSS over fork and exec, so a child of the benchmark (which
# holds the whole log) would report the benchmark's: a child of this small process reports its own.
MEASURED = """
import os, sys, time
began = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{time.perf_counter() - began} {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def arx_process(events: int, args: list[str], output: Path, server_pid: int | None = None) -> Run:
    """`arx ARGS` as a process of its own, from its start to its exit: its rate and its peak RSS."""
    server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
    measured = output.with_suffix(".measured")
    with open(output, "wb") as out:
        done = subprocess.run([sys.executable, "-c", MEASURED, measured, sys.executable, ROOT / "arx.py", *args],
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"arx {' '.join(args)} failed: {output.read_text()[-2000:]}")
    wall, cpu, peak_kib = map(float, measured.read_text().split())
    cpu += cpu_seconds(server_pid) - server_cpu if server_pid else 0.0
    return Run(rate=Rate(wall=events / wall, cpu=events / cpu), peak_rss_mib=peak_kib / 1024)


class Round(msgspec.Struct):
    floor: Rate
    stream: Run
    file: Run
    load: float  # 1-minute load average when the round ended


def measure(log: str, events: int, rounds: int, work: Path) -> tuple[list[Round], int]:
    server = LocalServer(work / "nats", home=work / "home").start()
    os.environ.update(NATS_URL=server.url, ARX_HOME=str(work / "home"))
    exported = work / "events.jsonl"
    try:
        count = asyncio.run(_prepare(LOGS[log](events), exported))  # the log is not kept: its memory is freed
        lines = [data for _, data in read_lines(exported)]
        results = []
        for r in range(rounds):
            out = work / f"round-{r}"
            out.mkdir()
            stream = arx_process(count, ["replay", "--db", str(out / "stream.db")], out / "stream.log", server.proc.pid)
            file = arx_process(count, ["replay", "--from-file", str(exported), "--db", str(out / "file.db")],
                               out / "file.log")
            rows = rows_of(out / "file.db")
            floor_rate = rate(count, lambda: floor(lines, rows, out / "floor.db"))
            shutil.rmtree(out)  # three copies of the database a round: do not fill the disk
            results.append(Round(floor=floor_rate, stream=stream, file=file, load=os.getloadavg()[0]))
            print(f"round {r + 1}: {_describe(results[-1])}", flush=True)
        return results, count
    finally:
        server.kill()


def peak_rss(log: str, events: int, work: Path) -> tuple[int, Run]:
    """`arx replay --from-file` of a log of `events` events, written straight to a file."""
    path = work / "long.jsonl"
    with open(path, "wb") as out:
        count = sum(out.write(encode(event) + b"\n") > 0 for event in LOGS[log](events))
    return count, arx_process(count, ["replay", "--from-file", str(path), "--db", str(work / "long.db")],
                              work / "long.log")


async def _prepare(log: Iterable[Event], exported: Path) -> int:
    """Publish the log to the bus and export it to a file; returns its length."""
    log = list(log)
    async with await Bus.connect(role="admin", name="bench-replay") as bus:
        await publish(bus, log)
        await export_campaign(bus, log[0].campaign_id, exported)
    return len(log)


def _describe(r: Round) -> str:
    return (f"floor {_cell(r.floor)}, stream {_run(r.stream)}, file {_run(r.file)},"
            f" load average {r.load:.1f}")


def _cell(r: Rate) -> str:
    return f"{r.wall:,.0f} ({r.cpu:,.0f} per CPU-s)"


def _run(r: Run) -> str:
    return f"{_cell(r.rate)}, {r.peak_rss_mib:,.0f} MiB"


REPLAYS = ("stream", "file")


SOURCES = {
    "pg_main": "pg_main, the seed release's 900-trial run as `arx import-tsv` imports it, its trials"
               " repeated under new ids",
    "synthetic": "a synthetic campaign of realistic sizes (hypotheses, diffs and log tails as long as real ones)",
}


def section(command: str, log: str, events: int, results: list[Round],
            long: tuple[int, Run] | None) -> tuple[str, bool]:
    def median(rates: list[Rate]) -> Rate:
        return Rate(wall=statistics.median(r.wall for r in rates), cpu=statistics.median(r.cpu for r in rates))

    floor_rate = median([r.floor for r in results])
    replay = {k: median([getattr(r, k).rate for r in results]) for k in REPLAYS}
    rss = {k: statistics.median(getattr(r, k).peak_rss_mib for r in results) for k in REPLAYS}
    fast = {k: replay[k].wall >= TARGET for k in REPLAYS}
    share = {k: replay[k].wall >= floor_rate.wall * FLOOR_SHARE for k in REPLAYS}
    text = "\n".join([
        f"## {SECTION}",
        "",
        f"`{command}`",
        "",
        f"The log, {events:,} events: {SOURCES[log]}.",
        "It is published to a fresh nats-server and exported to an event file. Each round rebuilds it three",
        "ways on this 2-core machine, which other engineers' tests and trainings share (hence the load",
        "average). Events per second of wall-clock time, and in brackets per CPU-second (of the process,",
        "and of nats-server for the stream), which depends less on that load. Floor: msgspec decode of",
        "every event, then the rows the replay built written as the replay writes them (one executemany per",
        "table, the secondary indexes made after the rows) into a fresh file, in the benchmark's process.",
        "Replays: `arx replay --db PATH` and `arx replay --from-file FILE --db PATH`, each a whole process",
        "from its start (imports included) to its exit, the new file swapped in. A replay folds the events",
        f"into rows held in memory and writes each row once, up to {IN_MEMORY_BYTES >> 20} MiB of events: past",
        "that it writes the rows and folds the rest a batch at a time as the live projector does, so that",
        "its peak RSS stays bounded.",
        "",
        "| round | floor | replay from the stream | replay from the file | peak RSS (stream, file) | load average |",
        "|---|---|---|---|---|---|",
        *(f"| {i} | {_cell(r.floor)} | {_cell(r.stream.rate)} | {_cell(r.file.rate)} |"
          f" {r.stream.peak_rss_mib:,.0f} MiB, {r.file.peak_rss_mib:,.0f} MiB | {r.load:.1f} |"
          for i, r in enumerate(results, 1)),
        f"| median | {_cell(floor_rate)} | {_cell(replay['stream'])} | {_cell(replay['file'])} |"
        f" {rss['stream']:,.0f} MiB, {rss['file']:,.0f} MiB | |",
        "",
        *(f"- replay from the {k}: {replay[k].wall / floor_rate.wall:.2f} of the floor's wall-clock rate"
          f" ({replay[k].cpu / floor_rate.cpu:.2f} per CPU-second): half of the floor {_verdict(share[k])},"
          f" {TARGET:,} events/s {_verdict(fast[k])}" for k in REPLAYS),
        "- besides the floor's decode and write, a replay starts Python and imports arx, reads the lines or",
        "  messages, checks each event's ids against its subject and folds it into its row, in one thread",
        *([f"- {TARGET:,} events/s is above the floor's own median here: a replay, which also starts a"
           " process, reads and folds every event, cannot reach it on this machine"]
          if floor_rate.wall < TARGET else []),
        *([f"- the same log made {long[0]:,} events long, `arx replay --from-file` once: peak RSS"
           f" {long[1].peak_rss_mib:,.0f} MiB, {long[1].rate.wall:,.0f} events/s ({long[1].rate.cpu:,.0f} per"
           f" CPU-s), its events past the first"
           f" {IN_MEMORY_BYTES >> 20} MiB folded a batch at a time"] if long else []),
        "",
    ])
    return text, all(fast.values()) and all(share.values())


def _verdict(met: bool) -> str:
    return "met" if met else "not met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", choices=sorted(LOGS), default="pg_main")
    parser.add_argument("--events", type=positive_int, default=180_014)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--rss-events", type=lambda text: positive_int(text, least=0), default=1_000_000,
                        help="0: no peak RSS run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    seed_run = SEED_RUNS / args.log / "results.tsv"
    if args.log != "synthetic" and not seed_run.is_file():  # found before a server starts, not after
        parser.error(f"--log {args.log}: no {seed_run}; use --log synthetic")
    with tempfile.TemporaryDirectory(prefix="arx-bench-replay-") as work:
        results, events = measure(args.log, args.events, args.rounds, Path(work))
        long = peak_rss(args.log, args.rss_events, Path(work)) if args.rss_events else None
    command = (f".venv/bin/python scripts/bench_replay.py --log {args.log} --events {args.events}"
               f" --rounds {args.rounds} --rss-events {args.rss_events}")
    text, met = section(command, args.log, events, results, long)
    report(SECTION, text, write=not args.no_write)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
