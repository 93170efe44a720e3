"""Time the prompt's lineage view on a large campaign: `python scripts/bench_lineage_view.py`.

Builds a lineage file with --trials trials (rows inserted directly, with text as long as real
hypotheses, diffs and log tails), then times build_view + render from a fresh connection. Exits 1 when
the median is over --budget-ms (50 ms: the issue's target on 100,000 trials).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.lineage_view import build_view  # noqa: E402
from projections.lineage import Lineage  # noqa: E402

SPECIALISTS = ("optimizer", "architecture", "data", "schedule", "regularization", "export")
# (label, share): a keep-poor, failure-rich campaign like the seed paper's.
OUTCOMES = (
    ("keep", 0.03), ("discard", 0.45), ("within_noise", 0.15), ("crash", 0.10), ("invalid_edit", 0.05),
    ("size_blocked", 0.07), ("disqualified", 0.05), ("train_budget_overrun", 0.05), ("harness_abort", 0.05),
)
IN_FLIGHT = 12
WORDS = "raise lower the learning rate momentum warmup schedule width depth quantize prune batch epochs".split()

TRIAL_SQL = """INSERT INTO trials (campaign_id, trial_id, proposed_seq, specialist, surface, policy, parent_id,
 hypothesis, expected_delta, diff, shown_ids, params, proposed_at, outcome, label, score, incumbent_id,
 incumbent_score, delta, noise, outcome_seq, outcome_at, evidence_stage, evidence_gate, evidence_measured,
 evidence_limit, evidence_frame, evidence_message, log_tail)
 VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"""


class Prose:
    """Random slices of one long text of words: as long as real fields, cheap to make 100,000 times."""

    def __init__(self, rng: random.Random, chars: int = 200_000):
        self.rng = rng
        self.text = " ".join(rng.choice(WORDS) for _ in range(chars // 6))

    def __call__(self, chars: int) -> str:
        start = self.rng.randrange(len(self.text) - chars)
        return self.text[start : start + chars]


def build(path: Path, trials: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = Prose(rng)
    lineage = Lineage(path, durable=False)
    c = "bench"
    lineage.db.execute(
        "INSERT INTO campaigns (campaign_id, task, metric, direction, max_trials, arm, noise, started_seq, spec)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        (c, "digits-speedrun", "train_s", "min", trials, "lineage", 0.03, 1, "{}"),
    )
    labels, shares = zip(*OUTCOMES)
    best_id, best = "t0000000", 10.0
    rows = []
    seq = 1
    for i in range(trials):
        trial = f"t{i:07d}"
        specialist = SPECIALISTS[i % len(SPECIALISTS)]
        label = "keep" if i == 0 else rng.choices(labels, shares)[0]
        parent = None if i == 0 else best_id
        seq += 1
        proposed = seq
        in_flight = i >= trials - IN_FLIGHT
        score = delta = None
        if label in ("keep", "discard", "within_noise", "size_blocked", "disqualified") and not in_flight:
            score = best * {"keep": 0.999, "discard": 1.02, "within_noise": 1.001}.get(label, 0.99)
            delta = score - best if i else None
        failed = label not in ("keep", "discard", "within_noise")
        seq += 1
        rows.append((
            c, trial, proposed, specialist, specialist, "llm", parent, words(rng.randint(150, 400)), -0.01,
            words(rng.randint(1000, 3000)), '["t0000000"]', "{}", "2026-01-01T00:00:00Z",
            None if in_flight else ("TrialRejected" if label == "invalid_edit" else "TrialScored"),
            None if in_flight else label, score, best_id, best, delta, 0.03,
            None if in_flight else seq, None if in_flight else "2026-01-01T00:00:01Z",
            "train" if failed else None, "size_mb" if label == "size_blocked" else None,
            17.2 if label == "size_blocked" else None, 16.0 if label == "size_blocked" else None,
            "train.py:88 in step" if failed else None, words(200) if failed else None,
            words(rng.randint(1000, 4000)) if failed else None,
        ))
        if label == "keep" and not in_flight:
            best_id, best = trial, score
        if len(rows) == 10_000:
            lineage.db.conn.executemany(TRIAL_SQL, rows)
            rows = []
    lineage.db.conn.executemany(TRIAL_SQL, rows)
    lineage.db.conn.commit()
    lineage.close()


def time_view(path: Path, runs: int) -> list[float]:
    lineage = Lineage(path, readonly=True)
    timings = []
    try:
        for i in range(runs):
            start = time.perf_counter()
            view = build_view(lineage, "bench", SPECIALISTS[i % len(SPECIALISTS)])
            text = view.render()
            timings.append((time.perf_counter() - start) * 1000)
        print(f"view: {len(text)} characters, {len(view.shown_ids)} trials shown, chain {len(view.chain)}")
    finally:
        lineage.close()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--db", help="build (or reuse, if it exists) this file instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="arx-bench-") as tmp:
        path = Path(args.db) if args.db else Path(tmp) / "lineage.db"
        if not path.exists():
            start = time.perf_counter()
            build(path, args.trials)
            print(f"built {args.trials} trials in {time.perf_counter() - start:.1f}s ({path.stat().st_size >> 20} MiB)")
        timings = time_view(path, args.runs)
    median = statistics.median(timings)
    print(f"build_view + render: first {timings[0]:.1f} ms, median {median:.1f} ms, max {max(timings):.1f} ms")
    if median > args.budget_ms:
        print(f"over the budget of {args.budget_ms:.0f} ms")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
