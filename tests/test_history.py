"""`arx history`: the campaign repo reads as the research history: outcomes as notes, keeps tagged."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cluster import Cluster

CAMPAIGN = "tiny-history"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def test_history_annotates_every_trial_tags_the_keeps_and_points_incumbent_at_the_best(arx_env, tmp_path):
    cluster = Cluster(arx_env, tmp_path / "logs")
    summary = cluster.run_tiny_campaign(CAMPAIGN)
    first = cluster.command("history", "--campaign", CAMPAIGN)
    repo = Path(arx_env["ARX_HOME"]) / "repos" / CAMPAIGN
    assert first.startswith(f"{repo}: 4 trials, ") and "keeps tagged keep/<trial>" in first

    keeps = [name for name, n in summary["labels"].items() if name == "keep" for _ in range(n)]
    tags = git(repo, "tag", "--list", "keep/*").split()
    assert len(tags) == len(keeps) and "keep/baseline" in tags
    # `incumbent` is the best trial's commit, and its note says how it ended.
    assert git(repo, "rev-parse", "incumbent") == git(repo, "rev-parse", f"refs/arx/trials/{summary['best_trial']}")
    note = git(repo, "notes", "show", "incumbent")
    assert note.startswith("keep  value ") and f"{summary['best_score']:.6g}" in note
    # Every trial's commit carries its outcome; the log along the incumbent is the keep chain with scores.
    logged = git(repo, "log", "--notes", "--format=%s%n%N", "incumbent")
    assert "baseline: " in logged and "keep  value 5" in logged

    # The second time: the same commits, the same notes and tags, nothing added.
    assert cluster.command("history", "--campaign", CAMPAIGN) == first
    assert git(repo, "tag", "--list", "keep/*").split() == tags
    assert git(repo, "notes", "list").count("\n") == 4


def test_history_of_a_campaign_that_does_not_exist_is_one_line(arx_env, tmp_path):
    done = Cluster(arx_env, tmp_path / "logs").arx("history", "--campaign", "nope")
    assert done.returncode == 1 and done.stderr == "arx history: no campaign nope in the log\n"
