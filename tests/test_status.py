"""`arx status` as a real command: from the log (no projector running) or from a lineage file."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest
from cluster import Cluster
from projection_events import campaign_events, proposed, publish_all, rejected

from bus.connection import Bus

KEYS = {"campaign", "task", "trials_scored", "labels", "baseline_score", "best_score", "best_trial",
        "improvement_pct", "noise", "recent", "stopped", "in_flight", "trials_proposed"}


@pytest.fixture
def cluster(arx_env, tmp_path):
    return Cluster(arx_env, tmp_path / "logs")


def publish(*events) -> None:
    async def run() -> None:
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, list(events))

    asyncio.run(run())


def status(cluster: Cluster, *args: str) -> dict:
    done = cluster.arx("status", "--json", *args, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_reads_the_log_or_a_file(cluster, tmp_path):
    # Six trials: one of each outcome after the baseline (keep 9.0, discard, within_noise, ...).
    publish(*campaign_events("first", trials=6), *campaign_events("second", trials=1))

    latest = status(cluster)
    assert latest["campaign"] == "second" and latest["trials_proposed"] == 2

    first = status(cluster, "--campaign", "first")
    assert KEYS <= set(first)
    assert first["labels"] == {"keep": 2, "discard": 1, "within_noise": 1, "invalid_edit": 1, "crash": 1,
                               "harness_abort": 1}
    assert (first["trials_scored"], first["baseline_score"], first["best_score"], first["best_trial"]) == (
        5, 10.0, 9.0, "t0"
    )
    assert (first["improvement_pct"], first["noise"], first["task"]) == (-10.0, 0.03, "digits-speedrun")
    assert first["best_gates"] == [{"metric": "accuracy", "measured": 0.97, "limit": 0.96, "passed": True},
                                   {"metric": "seeds", "measured": 3, "limit": 3, "passed": True}]

    db = tmp_path / "lineage.db"
    assert cluster.arx("replay", "--db", str(db)).returncode == 0
    from_file = status(cluster, "--db", str(db), "--campaign", "first")
    # Everything, stop rules and ledger included, is folded into the lineage: the file says what the log says.
    assert from_file == first

    table = cluster.arx("status", "--db", str(db), "--campaign", "first")
    assert table.returncode == 0, table.stderr
    for shown in ("first", "digits-speedrun", "lower is better", "change -10.000% (lower is better)",
                  "noise floor 3.0%", "harness_abort", "t0", "tpe-optimizer",
                  "trials (baseline included): 7 proposed, 5 scored, 0 in flight",
                  "incumbent gates: accuracy 0.97 (limit 0.96) passed, seeds 3 (limit 3) passed",
                  "labels (baseline included)", "delta vs incumbent",
                  # Piped, the table keeps its last column whole (rich would cut it at 80 columns).
                  "t0: a larger learning rate converges in fewer epochs"):
        assert shown in table.stdout, (shown, table.stdout)


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        ((), 1, "arx status: no campaign in the log"),
        (("--campaign", "nope"), 1, "arx status: no campaign nope in the log"),
        (("--campaign", "no spaces"), 1, "must be 1-64 characters"),
        (("--db", "/nonexistent/lineage.db"), 1, "no lineage database at /nonexistent/lineage.db"),
        (("--db", "{garbage}"), 1, "is not a readable lineage database"),
        (("--json", "--verbose"), 2, "unrecognized arguments: --verbose"),
    ],
)
def test_bad_requests_get_one_line_and_a_nonzero_status(cluster, tmp_path, args, status, message):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    done = cluster.arx("status", *(a.replace("{garbage}", str(garbage)) for a in args), timeout=60)
    assert done.returncode == status, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""


def test_the_table_shows_agent_text_as_it_is(cluster):
    odd = msgspec.structs.replace(proposed("c", "odd", None), hypothesis="[/tmp] is\nno [bold]markup")
    publish(*campaign_events("c", trials=0), odd, rejected("c", "odd"))
    table = cluster.arx("status")
    assert table.returncode == 0, table.stderr
    assert "[/tmp] is no [bold]" in table.stdout
