"""`arx replay --from-file`: the same database as a replay of the stream, and never into a file a
projector follows."""

from __future__ import annotations

import asyncio
import time

from cluster import Cluster
from projection_events import campaign_events, dump, publish_all

from bus.connection import Bus
from bus.eventfile import export_campaign

C = "c1"


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
