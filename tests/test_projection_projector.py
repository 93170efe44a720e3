"""`arx projector` and `arx replay` as real processes: a killed projector, a swap under a running one,
a killed nats-server. Each must end with the same database a fresh replay builds."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

from cluster import Cluster
from projection_events import campaign_events, dump, publish_all

from bus.connection import Bus
from projections.lineage import SCHEMA, Lineage, OutdatedLineage

C = "c1"
WAIT_S = 60.0


def checkpoint(db) -> int:
    """The projector's checkpoint, or -1 while its file does not exist yet."""
    if not db.exists():
        return -1
    try:
        lineage = Lineage(db, readonly=True)
    except OutdatedLineage:  # not rebuilt yet
        return -1
    try:
        return lineage.checkpoint
    except sqlite3.OperationalError:  # schema not written yet
        return -1
    finally:
        lineage.close()


async def wait_for(cluster: Cluster, condition, what: str, timeout: float = WAIT_S) -> None:
    """Wait for condition while every process of the cluster stays up."""
    deadline = time.monotonic() + timeout
    while not condition():
        for name, proc in cluster.procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}: {cluster.log(name)[-2000:]}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def publish_slowly(bus: Bus, events: list, chunk: int = 50) -> None:
    """Publish in small chunks with pauses, so that a test can act while the log is still growing."""
    for i in range(0, len(events), chunk):
        await publish_all(bus, events[i : i + chunk])
        await asyncio.sleep(0.02)


def stop(cluster: Cluster, name: str) -> None:
    """SIGTERM: the projector must stop cleanly, with exit status 0."""
    proc = cluster.procs.pop(name)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, cluster.log(name)[-2000:]


def run_then_stop_the_projector(cluster: Cluster, scenario) -> None:
    """Run the async scenario, then stop the projector cleanly; nothing the cluster started outlives it."""
    try:
        asyncio.run(scenario())
        stop(cluster, "projector")
    finally:
        cluster.stop_all()


def assert_equals_a_replay(cluster: Cluster, db, tmp_path, events: int) -> None:
    fresh = tmp_path / "replayed.db"
    done = cluster.arx("replay", "--db", str(fresh))
    assert done.returncode == 0, done.stderr
    assert f"{events} applied, 0 skipped" in done.stdout
    assert dump(db) == dump(fresh)


def test_a_projector_killed_mid_stream_ends_equal_to_a_replay(arx_env, tmp_path):
    cluster = Cluster(arx_env, tmp_path / "logs")
    db = tmp_path / "lineage.db"
    events = campaign_events(C, trials=600)

    async def scenario() -> None:
        async with await Bus.connect(role="admin") as bus:
            cluster.start("projector", "projector", "--db", str(db))
            await wait_for(cluster, lambda: checkpoint(db) >= 0, "projector start")
            publishing = asyncio.create_task(publish_slowly(bus, events))
            await wait_for(cluster, lambda: checkpoint(db) >= 400, "projection of 400 events")
            cluster.kill("projector")  # SIGKILL, between or inside a batch
            assert not publishing.done(), "the log stopped growing before the kill"
            cluster.start("projector", "projector", "--db", str(db))
            await publishing
            last = await bus.last_seq()
            await wait_for(cluster, lambda: checkpoint(db) == last, "catching up after the restart")

    run_then_stop_the_projector(cluster, scenario)
    assert_equals_a_replay(cluster, db, tmp_path, len(events))


def test_replay_swaps_the_file_under_a_running_projector(arx_env, tmp_path):
    cluster = Cluster(arx_env, tmp_path / "logs")
    db = tmp_path / "lineage.db"
    events = campaign_events(C, trials=120)
    half = len(events) // 2

    async def scenario() -> None:
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, events[:half])
            cluster.start("projector", "projector", "--db", str(db))
            await wait_for(cluster, lambda: checkpoint(db) == half, "projection of the first half")
            second = cluster.arx("projector", "--db", str(db), timeout=30)
            assert second.returncode == 1 and "another projector is already writing" in second.stderr

            for _ in range(2):  # the second swap also removes the file the first one built
                replayed = cluster.arx("replay", "--db", str(db))
                assert replayed.returncode == 0, replayed.stderr
                assert f"replayed {half} events up to seq {half}" in replayed.stdout
            assert db.is_symlink() and len(list(tmp_path.glob("lineage.db.replay-*"))) == 1

            await publish_all(bus, events[half:])
            await wait_for(cluster, lambda: checkpoint(db) == len(events), "projection into the swapped-in file")

    run_then_stop_the_projector(cluster, scenario)
    assert "was replaced; reopening it" in cluster.log("projector")
    assert_equals_a_replay(cluster, db, tmp_path, len(events))


def test_the_projector_goes_on_after_nats_server_is_killed(arx_env, nats_server, tmp_path):
    cluster = Cluster(arx_env, tmp_path / "logs")
    db = tmp_path / "lineage.db"
    events = campaign_events(C, trials=90)
    third = len(events) // 3

    async def scenario() -> None:
        async with await Bus.connect(role="admin") as bus:
            cluster.start("projector", "projector", "--db", str(db))
            await publish_all(bus, events[:third])
            await wait_for(cluster, lambda: checkpoint(db) == third, "projection before the kill")

            nats_server.kill()
            nats_server.start()  # same port, same store
            await wait_for(cluster, lambda: bus.nc.is_connected, "reconnection to the restarted server")
            await publish_all(bus, events[third : 2 * third])
            await wait_for(cluster, lambda: checkpoint(db) == 2 * third, "projection after the restart")

            for consumer in await bus.js.consumers_info(bus.settings.stream):  # as if the server forgot it
                await bus.js.delete_consumer(bus.settings.stream, consumer.name)
            await publish_all(bus, events[2 * third :])
            await wait_for(cluster, lambda: checkpoint(db) == len(events), "projection after losing the consumer")

    run_then_stop_the_projector(cluster, scenario)
    assert_equals_a_replay(cluster, db, tmp_path, len(events))


def test_the_projector_outlives_a_reader_that_locks_the_file(arx_env, tmp_path):
    cluster = Cluster(arx_env, tmp_path / "logs")
    db = tmp_path / "lineage.db"
    events = campaign_events(C, trials=30)

    async def scenario() -> None:
        async with await Bus.connect(role="admin") as bus:
            cluster.start("projector", "projector", "--db", str(db))
            await wait_for(cluster, lambda: checkpoint(db) >= 0, "projector start")
            reader = sqlite3.connect(db, isolation_level=None)
            reader.execute("BEGIN EXCLUSIVE")  # longer than SQLite's 5 s busy timeout
            await publish_all(bus, events)
            await asyncio.sleep(6)
            reader.execute("ROLLBACK")
            reader.close()
            await wait_for(cluster, lambda: checkpoint(db) == len(events), "projection after the lock")

    run_then_stop_the_projector(cluster, scenario)
    assert "OperationalError: database is locked; reading again from the checkpoint" in cluster.log("projector")
    assert_equals_a_replay(cluster, db, tmp_path, len(events))


def test_a_corrupt_lineage_db_is_one_line_that_says_how_to_rebuild_it(arx_env, tmp_path):
    db = Path(arx_env["ARX_HOME"]) / "lineage.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"\x00garbage, not SQLite\xff" * 1000)
    done = Cluster(arx_env, tmp_path / "logs").arx("projector", timeout=60)
    assert done.returncode == 1
    assert done.stderr == (
        f"arx projector: {db} is corrupt (file is not a database): `arx replay` rebuilds it from the log\n"
    )


def test_a_lineage_db_from_an_older_arx_is_named_and_the_projector_rebuilds_it(arx_env, tmp_path):
    """After an upgrade that adds a column, readers say how to rebuild the file; the projector rebuilds it."""
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(SCHEMA.replace("proposed_at TEXT, slot INTEGER,", "proposed_at TEXT,"))
    old.close()
    cluster = Cluster(arx_env, tmp_path / "logs")
    status = cluster.arx("status", "--db", str(db))
    assert status.returncode == 1 and status.stderr == (
        f"arx status: {db} was made by an older arx (no trials.slot): `arx replay --db {db}` rebuilds it from"
        " the log\n")
    events = campaign_events(C, trials=6)

    async def scenario() -> None:
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, events)
        cluster.start("projector", "projector", "--db", str(db))
        await wait_for(cluster, lambda: checkpoint(db) == len(events), "the rebuild")

    run_then_stop_the_projector(cluster, scenario)
    assert "was made by an older arx (no trials.slot): `arx replay" in cluster.log("projector")
    assert_equals_a_replay(cluster, db, tmp_path, len(events))
