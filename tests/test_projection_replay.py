"""`arx replay`: it folds the log in memory (up to a bound) and writes each row once, and builds the
same database as the live fold; from a file, the same as from the stream, and never into a file a
projector follows."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest
from cluster import Cluster
from projection_events import campaign_events, dump, publish_all
from test_projection_batches import random_log, story_log

from bus.connection import Bus, StoredMessage
from bus.eventfile import export_campaign
from projections.lineage import Lineage, Rebuild
from projections.projector import replay

C = "c1"


def live_fold(log: list[StoredMessage], path, batch: int) -> list[str]:
    """The database `arx projector` folds from the log, `batch` messages at a time."""
    lineage = Lineage(path)
    for i in range(0, len(log), batch):
        lineage.apply(log[i : i + batch])
    lineage.close()
    return dump(path)


def overlapping(log: list[StoredMessage], size: int = 50):
    """The log in batches that each begin with a few messages of the batch before (read again)."""
    for i in range(0, len(log), size):
        yield log[max(0, i - 5) : i + size]


async def read(batches):
    for batch in batches:
        yield batch


def rebuilt(log: list[StoredMessage], path, in_memory: int) -> list[str]:
    lineage = Lineage(path, durable=False)
    rebuild = Rebuild(lineage, in_memory)
    for batch in overlapping(log):
        rebuild.add(batch)
    assert rebuild.written == (sum(len(msg.data) for msg in log) >= in_memory)  # past its bound, none held
    rebuild.finish()
    lineage.close()
    return dump(path)


@pytest.mark.parametrize("seed", range(6))
def test_a_replay_folded_in_memory_builds_the_database_of_the_live_fold(seed, tmp_path):
    # Rival outcomes, redeliveries, events before their trial's proposal, unusable messages (skipped).
    logs = {"random": random_log(seed, overflows=2 * (seed % 2)), "stories": story_log(seed), "empty": []}
    for name, log in logs.items():
        live = live_fold(log, tmp_path / f"{name}-live.db", batch=7)
        replayed = tmp_path / f"{name}-replayed.db"
        anyio.run(replay, read(overlapping(log)), replayed)
        assert dump(replayed) == live, name
        # Past its memory bound (here a few batches' bytes), a rebuild goes on as the live fold.
        assert rebuilt(log, tmp_path / f"{name}-bounded.db", in_memory=20_000) == live, name


def test_a_rebuild_refuses_a_lineage_that_holds_a_fold(tmp_path):
    lineage = Lineage(tmp_path / "lineage.db")
    lineage.apply(story_log(0)[:3])
    with pytest.raises(ValueError, match="a rebuild starts from an empty lineage"):
        Rebuild(lineage)


def test_a_replay_from_an_exported_file_equals_a_replay_from_the_stream(arx_env, tmp_path):
    events = campaign_events(C, trials=40)
    exported = tmp_path / "c1.jsonl"

    async def prepare():
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, events)
            await export_campaign(bus, C, exported)

    asyncio.run(prepare())
    with open(exported, "ab") as out:
        out.write(b'{"type": "TrialProposed", "event_id": "cut sh')  # a last line cut short
    cluster = Cluster(arx_env, tmp_path / "logs")
    from_stream = cluster.arx("replay", "--db", str(tmp_path / "stream.db"))
    from_file = cluster.arx("replay", "--from-file", str(exported), "--db", str(tmp_path / "file.db"))
    assert from_stream.returncode == 0 and from_file.returncode == 0, from_stream.stderr + from_file.stderr
    assert f"{len(events)} applied, 0 skipped" in from_stream.stdout
    assert f"replayed {len(events) + 1} events up to seq {len(events) + 1}" in from_file.stdout
    assert f"{len(events)} applied, 1 skipped" in from_file.stdout
    cut_short = f'INSERT INTO "skipped_events" VALUES({len(events) + 1},'
    # Apart from where each read ended and the line cut short, the two files hold the same rows.
    rows = [line for line in dump(tmp_path / "file.db") if "projection_state" not in line and cut_short not in line]
    assert rows == [line for line in dump(tmp_path / "stream.db") if "projection_state" not in line]


def test_a_replay_from_a_file_refuses_a_database_that_a_projector_follows(arx_env, tmp_path):
    exported = tmp_path / "c1.jsonl"
    exported.write_bytes(b"")
    db = tmp_path / "lineage.db"
    cluster = Cluster(arx_env, tmp_path / "logs")
    cluster.start("projector", "projector", "--db", str(db))
    try:
        deadline = time.monotonic() + 30
        while not db.exists():
            assert time.monotonic() < deadline, cluster.log("projector")
            time.sleep(0.05)
        refused = cluster.arx("replay", "--from-file", str(exported), "--db", str(db))
    finally:
        cluster.stop_all()
    assert refused.returncode == 1
    assert f"a projector follows {db}: replay the file into another --db" in refused.stderr
    missing = cluster.arx("replay", "--from-file", str(tmp_path / "none.jsonl"), "--db", str(db))
    assert missing.returncode == 1 and "none.jsonl: no such event file" in missing.stderr
