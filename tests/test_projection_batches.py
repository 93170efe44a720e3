"""Folding a log in batches (each row read once, folded in memory, written back once) leaves exactly the
rows of folding it one event at a time, whatever the log's order, duplicates, rivals and unusable messages."""

from __future__ import annotations

import random

import msgspec
import pytest
from projection_events import abandoned, campaign_started, finished, proposed, rejected, scored, started

from bus.connection import StoredMessage
from bus.events import CampaignStopped, GateVerdict, SpecialistJoined, TrialStarted, encode
from projections.lineage import Lineage

CAMPAIGNS = ("c1", "c2")
UNUSABLE = (
    b"\x00not json",
    b'{"type": "TrialReviewed", "event_id": "r", "campaign_id": "c1"}',
    b'{"type": "TrialStarted", "event_id": "n", "campaign_id": "c1", "trial_id": "t1", "executor": "x", "schema": 9}',
)


def random_event(rng: random.Random, n: int):
    """Any event a log can hold, in any order: rivals, redeliveries, a stop before the start. Its
    trial is one of the few latest (about ten events each), as when trials run side by side."""
    c, t = rng.choice(CAMPAIGNS), f"t{max(0, n // 10 - rng.randrange(4))}"
    kind = rng.randrange(11)
    if kind == 0:
        return campaign_started(c, noise=rng.random())
    if kind == 1:
        return CampaignStopped(event_id=f"stop-{n}", campaign_id=c, reason=f"reason {n}")
    if kind == 2:
        return SpecialistJoined(event_id=f"j-{n}", campaign_id=c, specialist=rng.choice("ab"), surface=f"s{n}",
                                policy="p")
    if kind in (3, 4):
        return proposed(c, t, rng.choice((None, "t0")), specialist=f"spec-{n}")  # some twice
    if kind == 5:
        return started(c, t, attempt=rng.randint(1, 2))
    if kind == 6:
        return finished(c, t, exit_code=n)
    if kind == 7:
        return scored_with_a_gate_twice(rng, c, t, n)
    if kind == 8:
        return rejected(c, t)
    if kind == 9:
        return abandoned(c, t)
    return None  # an unusable message


def scored_with_a_gate_twice(rng: random.Random, c: str, t: str, n: int):
    """A scored outcome whose gates name one gate twice (the first verdict stands)."""
    event = scored(c, t, rng.choice(("keep", "discard")), float(n), ("t0", 1.0))
    repeated = GateVerdict(gate="accuracy", passed=False, measured=float(n))
    return msgspec.structs.replace(event, event_id=f"o-{n}-{rng.random()}", gates=[*event.gates, repeated])


def random_log(seed: int, length: int = 400, overflows: int = 0) -> list[StoredMessage]:
    """A random log; `overflows` of its messages hold an integer SQLite cannot store (skipped, counted)."""
    rng = random.Random(seed)
    log = []
    for seq in range(1, length + 1):
        event = random_event(rng, seq)
        data = encode(event) if event is not None else rng.choice(UNUSABLE)
        log.append(StoredMessage(seq, event.subject if event is not None else "arx.ev.c1.trial.t1.x", data))
    for seq in rng.sample(range(1, length + 1), overflows):
        big = TrialStarted(event_id=f"big-{seq}", campaign_id="c1", trial_id="t1", executor="x", attempt=2**64 - 1)
        log[seq - 1] = StoredMessage(seq, big.subject, encode(big))
    return log


def trial_story(rng: random.Random, c: str, t: str, n: int) -> list:
    """One trial's events in about the order its roles log them, with what goes wrong in practice:
    redeliveries (also of the same attempt), a rival outcome, a finish or a start after the outcome."""
    events = [proposed(c, t, None, specialist=f"spec-{n}")]
    events += [started(c, t, attempt=a) for a in sorted(rng.choices((1, 2, 3), k=rng.randint(0, 3)))]
    if rng.random() < 0.8:
        events.append(finished(c, t, exit_code=n))
    outcomes = [lambda: scored_with_a_gate_twice(rng, c, t, n), lambda: rejected(c, t), lambda: abandoned(c, t)]
    events += [rng.choice(outcomes)() for _ in range(rng.choice((0, 1, 1, 1, 2)))]
    if rng.random() < 0.2:
        events.append(rng.choice((finished(c, t, exit_code=-n), started(c, t, attempt=2), proposed(c, t, "t0"))))
    return events


def story_log(seed: int, trials: int = 60, side_by_side: int = 6) -> list[StoredMessage]:
    """Trials' stories interleaved as concurrent trials log them, with unusable messages between."""
    rng = random.Random(seed)
    stories = [trial_story(rng, rng.choice(CAMPAIGNS), f"t{i}", i) for i in range(trials)]
    running, log = [], []
    while stories or running:
        while stories and len(running) < side_by_side:
            running.append(stories.pop(0))
        story = rng.choice(running)
        event = story.pop(0)
        if not story:
            running.remove(story)
        log.append((event.subject, encode(event)))
        if rng.random() < 0.03:
            log.append(("arx.ev.c1.trial.t1.x", rng.choice(UNUSABLE)))
    return [StoredMessage(seq, subject, data) for seq, (subject, data) in enumerate(log, 1)]


def fold(log: list[StoredMessage], batch: int) -> list[str]:
    lineage = Lineage()
    for i in range(0, len(log), batch):
        lineage.apply(log[i : i + batch])
    return list(lineage.db.conn.iterdump())


@pytest.mark.parametrize("seed", range(8))
def test_a_bulk_fold_equals_folding_one_event_at_a_time(seed):
    for log in (random_log(seed, overflows=2 * (seed % 2)), story_log(seed)):
        one_by_one = fold(log, batch=1)  # a run of one event runs in its own order
        for batch in (7, 64, len(log)):
            assert fold(log, batch) == one_by_one, f"batches of {batch}"


def test_a_start_after_the_outcome_counts_a_finish_after_it_does_not():
    c = "c1"
    again = msgspec.structs.replace(started(c, "t1", attempt=2), event_id="again", executor="executor-9")
    events = [proposed(c, "t1", None), started(c, "t1"), abandoned(c, "t1"), started(c, "t1", attempt=2),
              again, started(c, "t1"), finished(c, "t1"), started(c, "t2"), proposed(c, "t2", None)]
    log = [StoredMessage(seq, e.subject, encode(e)) for seq, e in enumerate(events, 1)]
    for batch in (1, len(log)):
        lineage = Lineage()
        for i in range(0, len(log), batch):
            lineage.apply(log[i : i + batch])
        rows = lineage.query("SELECT trial_id, outcome, finished_at, attempts, executor FROM trials ORDER BY rowid")
        assert rows == [  # the latest start of the latest attempt, logged after the outcome, stands
            {"trial_id": "t1", "outcome": "TrialAbandoned", "finished_at": None, "attempts": 2,
             "executor": "executor-9"},
            {"trial_id": "t2", "outcome": None, "finished_at": None, "attempts": 0, "executor": None},
        ], f"batches of {batch}"
