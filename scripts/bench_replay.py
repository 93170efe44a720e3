"""`arx replay` against its floor, written into BENCHMARKS.md.

    .venv/bin/python scripts/bench_replay.py [--events 100000] [--rounds 3]

Generates a campaign log of realistic sizes (hypotheses, diffs and log tails as long as real ones,
a dozen trials interleaved), publishes it to a fresh nats-server and exports it to an event file.
Then, in rounds, measures: the floor (msgspec decode of every event, and one executemany per table
of the rows the replay built, into a fresh file with the same schema), `arx replay` from the stream
and `arx replay --from-file`, each in events/s, with the load average of this (shared) machine.
Exits 1 when a replay's median is under 100,000 events/s or under a third of the floor's median.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.bench import report  # noqa: E402
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
from projections.lineage import Lineage  # noqa: E402
from projections.projector import REPLAY_BATCH, file_batches, replay  # noqa: E402

SECTION = "Replay"
TARGET = 100_000  # events/s, and at least a third of the floor
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
    """Decode every event with msgspec and insert the same rows, one executemany a table."""
    decoder = msgspec.json.Decoder(AnyEvent)
    for line in lines:
        decoder.decode(line)
    lineage = Lineage(path, durable=False)
    with lineage.db.conn:
        for table, (width, values) in rows.items():
            lineage.db.conn.executemany(f'INSERT INTO "{table}" VALUES ({",".join("?" * width)})', values)
    lineage.close()


class Rate(msgspec.Struct):
    """Events per second of wall-clock time, and per second of CPU time (this process's and, for a
    replay from the stream, nats-server's): the second depends less on the other work on the machine."""

    wall: float
    cpu: float


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user and system) used so far by this process, or by process `pid`."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(events: int, run: Callable[[], object], server_pid: int | None = None) -> Rate:
    gc.collect()
    wall, cpu = time.perf_counter(), cpu_seconds() + (cpu_seconds(server_pid) if server_pid else 0.0)
    run()
    cpu = cpu_seconds() + (cpu_seconds(server_pid) if server_pid else 0.0) - cpu
    return Rate(wall=events / (time.perf_counter() - wall), cpu=events / cpu)


class Round(msgspec.Struct):
    floor: Rate
    stream: Rate
    file: Rate
    load: float  # 1-minute load average when the round ended


def measure(events: int, rounds: int, work: Path) -> tuple[list[Round], int]:
    server = LocalServer(work / "nats", home=work / "home").start()
    os.environ.update(NATS_URL=server.url, ARX_HOME=str(work / "home"))
    exported = work / "events.jsonl"
    try:
        count = asyncio.run(_prepare(campaign_log(events), exported))  # the log is not kept: its memory is freed
        lines = [data for _, data in read_lines(exported)]
        results = []
        for r in range(rounds):
            db = work / f"lineage-{r}.db"
            stream = rate(count, lambda: asyncio.run(_replay_stream(db)), server.proc.pid)
            file = rate(count, lambda: asyncio.run(replay(file_batches(exported), work / f"from-file-{r}.db")))
            rows = rows_of(db)
            floor_rate = rate(count, lambda: floor(lines, rows, work / f"floor-{r}.db"))
            results.append(Round(floor=floor_rate, stream=stream, file=file, load=os.getloadavg()[0]))
            print(f"round {r + 1}: {_describe(results[-1])}", flush=True)
        return results, count
    finally:
        server.kill()


async def _prepare(log: list[Event], exported: Path) -> int:
    """Publish the log to the bus and export it to a file; returns its length."""
    async with await Bus.connect(role="admin", name="bench-replay") as bus:
        await publish(bus, log)
        await export_campaign(bus, C, exported)
    return len(log)


async def _replay_stream(db: Path) -> None:
    async with await Bus.connect(role="admin", name="bench-replay") as bus:
        await replay(bus.read(batch=REPLAY_BATCH), db)


def _describe(r: Round) -> str:
    return ", ".join(f"{k} {_cell(getattr(r, k))}" for k in KINDS) + f", load average {r.load:.1f}"


def _cell(r: Rate) -> str:
    return f"{r.wall:,.0f} ({r.cpu:,.0f} per CPU-s)"


KINDS = ("floor", "stream", "file")


def section(command: str, events: int, results: list[Round]) -> tuple[str, bool]:
    median = {k: Rate(wall=statistics.median(getattr(r, k).wall for r in results),
                      cpu=statistics.median(getattr(r, k).cpu for r in results)) for k in KINDS}
    rate = {k: median[k].wall >= TARGET for k in ("stream", "file")}
    share = {k: median[k].wall >= median["floor"].wall / 3 for k in ("stream", "file")}
    text = "\n".join([
        f"## {SECTION}",
        "",
        f"`{command}`",
        "",
        f"A campaign log of {events:,} events of realistic sizes (hypotheses, diffs and log tails as long",
        "as real ones, a dozen trials interleaved), published to a fresh nats-server and exported to an",
        "event file. Each round rebuilds it three ways on this 2-core machine, which other engineers'",
        "tests and trainings share (hence the load average). Events per second of wall-clock time, and",
        "in brackets per CPU-second (of this process, and of nats-server for the stream), which depends",
        "less on that load. Floor: msgspec decode of every event, then the rows the replay built inserted",
        "with one executemany per table into a fresh file with the same schema. Replays: what `arx replay",
        "--db PATH` and `arx replay --from-file FILE --db PATH` run, from the first read to the swapped-in file.",
        "",
        "| round | floor | replay from the stream | replay from the file | load average (1 min) |",
        "|---|---|---|---|---|",
        *(f"| {i} | {_cell(r.floor)} | {_cell(r.stream)} | {_cell(r.file)} | {r.load:.1f} |"
          for i, r in enumerate(results, 1)),
        f"| median | {_cell(median['floor'])} | {_cell(median['stream'])} | {_cell(median['file'])} | |",
        "",
        *(f"- replay from the {k}: {median[k].wall / median['floor'].wall:.2f} of the floor's wall-clock rate"
          f" ({median[k].cpu / median['floor'].cpu:.2f} per CPU-second): a third of the floor"
          f" {_verdict(share[k])}, {TARGET:,} events/s {_verdict(rate[k])}" for k in ("stream", "file")),
        *([f"- {TARGET:,} events/s is above the floor's own median here: a replay, which also reads and folds"
           " every event, cannot reach it on this machine"] if median["floor"].wall < TARGET else []),
        "",
    ])
    return text, all(rate.values()) and all(share.values())


def _verdict(met: bool) -> str:
    return "met" if met else "not met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="arx-bench-replay-") as work:
        results, events = measure(args.events, args.rounds, Path(work))
    command = f".venv/bin/python scripts/bench_replay.py --events {args.events} --rounds {args.rounds}"
    text, met = section(command, events, results)
    report(SECTION, text, write=not args.no_write)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
