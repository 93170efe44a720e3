"""A campaign exported with its objects moves to a fresh server whole: any trial's tree rebuilds there,
and its stored artifact re-scores to the score the log holds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bus import subjects
from bus.connection import Bus
from bus.local import LocalServer
from cluster import Cluster
from evaluators.spec import load_task
from evaluators.unpack import unpack_artifact

CAMPAIGN = "travels"


async def rescored(settings, trial: str, folder: Path) -> float:
    """The trial's artifact, fetched from the server's object store into folder, scored by the task's own code."""
    async with await Bus.connect(settings, role="reader") as bus:
        finished = await bus.last_event(subjects.trial(CAMPAIGN, trial, "finished.*"))
        data = await bus.get_object(finished.artifact)
    folder.mkdir()
    unpack_artifact(data, folder)
    task = load_task("tiny").module()
    return task.metrics(task.predict(folder, task.heldout()[0]), None)["value"]


def test_a_campaign_exported_with_its_objects_rebuilds_and_rescores_on_a_fresh_server(arx_env, tmp_path):
    source = Cluster(arx_env, tmp_path / "logs")
    summary = source.run_tiny_campaign(CAMPAIGN)
    exported = tmp_path / "travels.jsonl"
    out = source.command("export", "--campaign", CAMPAIGN, "--objects", str(exported))
    manifest = (tmp_path / "travels.jsonl.objects" / "manifest.jsonl").read_text().splitlines()
    # The bundle, and a log and an artifact per run.
    assert f"and {len(manifest)} objects" in out and len(manifest) >= 1 + 2 * summary["trials_scored"]

    fresh = LocalServer(tmp_path / "nats-fresh", home=tmp_path / "home-fresh").start()
    try:
        target_env = arx_env | {"NATS_URL": fresh.url, "ARX_HOME": str(tmp_path / "home-fresh")}
        target = Cluster(target_env, tmp_path / "logs-fresh")
        imported = target.command("import", str(exported))
        assert f"; {len(manifest)} objects" in imported
        best = summary["best_trial"]
        # The whole tree of the incumbent rebuilds there from the bundle and the diffs, as it did here.
        source.command("recipe", best, "--campaign", CAMPAIGN, "--out", str(tmp_path / "here"))
        target.command("recipe", best, "--campaign", CAMPAIGN, "--out", str(tmp_path / "there"))
        here, there = (sorted(p.relative_to(tmp_path / d) for p in (tmp_path / d).rglob("*")) for d in ("here", "there"))
        assert here == there and all(
            (tmp_path / "here" / p).read_bytes() == (tmp_path / "there" / p).read_bytes()
            for p in here if (tmp_path / "here" / p).is_file()
        )
        # Its artifact, from the fresh server's object store, scores what the log says it scored.
        assert asyncio.run(rescored(fresh.settings, best, tmp_path / "artifact")) == pytest.approx(summary["best_score"])
        assert json.loads(target.command("status", "--json", "--campaign", CAMPAIGN))["best_score"] == summary["best_score"]
    finally:
        fresh.kill()


def test_an_object_whose_bytes_are_not_its_hash_is_refused_and_nothing_is_imported(arx_env, tmp_path):
    source = Cluster(arx_env, tmp_path / "logs")
    source.run_tiny_campaign(CAMPAIGN)
    exported = tmp_path / "travels.jsonl"
    source.command("export", "--campaign", CAMPAIGN, "--objects", str(exported))
    folder = tmp_path / "travels.jsonl.objects"
    victim = next(p for p in folder.iterdir() if p.name != "manifest.jsonl")
    victim.write_bytes(victim.read_bytes() + b"tampered")
    fresh = LocalServer(tmp_path / "nats-fresh", home=tmp_path / "home-fresh").start()
    try:
        target = Cluster(arx_env | {"NATS_URL": fresh.url, "ARX_HOME": str(tmp_path / "home-fresh")}, tmp_path / "l2")
        done = target.arx("import", str(exported))
        assert done.returncode == 1 and f"{victim}: not the object" in done.stderr
        assert "no campaign" in target.arx("status", "--campaign", CAMPAIGN).stderr  # no event went in either
    finally:
        fresh.kill()
