"""`arx bench research` end to end on the tiny task: a cluster per arm and seed, a table, JSON, a section."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agents.bench import SECTION, Run, replace_section, verdict

ROOT = Path(__file__).resolve().parent.parent


def test_runs_each_arm_on_its_own_cluster_and_writes_the_section(tmp_path):
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\n## Replay\n\nother numbers\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARX_", "NATS_"))}
    env["ARX_TASKS_PATH"] = str(ROOT / "tests" / "tasks")
    command = [sys.executable, "-m", "arx", "bench", "research", "--task", "tiny", "--arms", "lineage,no-lineage",
               "--trials", "2", "--seeds", "1", "--json", "--benchmarks", str(benchmarks), "--keep"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout)
    assert [(r["arm"], r["seed"]) for r in runs] == [("lineage", 0), ("no-lineage", 0)]
    for run in runs:
        assert list(run) == ["arm", "seed", "baseline_score", "best_score", "improvement_pct", "labels", "ledger"]
        # Arms are compared at equal cost too: each run's ledger has its runs' CPU time.
        assert run["ledger"]["device_s"]["cpu"] > 0 and run["ledger"]["total_usd"] == 0.0
        assert run["baseline_score"] == 5.0  # the tiny recipe's VALUE: both arms start from it
        assert run["best_score"] <= 5.0 and sum(run["labels"].values()) == 2 and run["labels"]["keep"] >= 1
        # signed change, as in `arx status`: negative when the lower-is-better VALUE went down
        assert run["improvement_pct"] == pytest.approx((run["best_score"] - 5.0) / 5.0 * 100, abs=1e-3)
    text = benchmarks.read_text()
    assert "## Replay\n\nother numbers\n" in text
    assert f"## {SECTION}" in text and "`arx bench research --task tiny --arms lineage,no-lineage --trials 2" in text
    assert "| lineage | 0 | 5 |" in text and "| no-lineage | 0 | 5 |" in text and "| $0 (LLM $0 for 0 tokens" in text
    # Each run had a nats-server of its own: its own port, its own store holding only its own campaign.
    workdir = Path(re.search(r"logs of the runs are in (\S+)", done.stderr).group(1))
    try:
        listens = {run: (workdir / run / "nats" / "nats.conf").read_text().split("listen: ")[1].split()[0]
                   for run in ("lineage-0", "no-lineage-0")}
        assert len(set(listens.values())) == 2, listens
        for run in listens:
            streams = (workdir / run / "nats" / "store").rglob("*.blk")
            held = b"".join(path.read_bytes() for path in streams)
            other = "no-lineage-0" if run == "lineage-0" else "lineage-0"
            assert f"research-{run}".encode() in held and f"research-{other}".encode() not in held
    finally:
        shutil.rmtree(workdir)


def test_a_second_write_replaces_the_section_and_keeps_the_others(tmp_path):
    path = tmp_path / "B.md"
    replace_section(path, "A", "## A\n\nfirst\n")
    replace_section(path, "B", "## B\n\nb\n")
    replace_section(path, "A", "## A\n\nsecond\n")
    assert path.read_text() == "# Benchmarks\n\n## A\n\nsecond\n\n## B\n\nb\n"


def test_the_verdict_counts_improvement_in_the_task_direction_on_medians():
    def run(arm, pct, direction="min"):
        return Run(arm, 0, 10.0, 10.0, pct, {}, 1, 1.0, True, direction)

    assert run("a", -25.0).better_pct == 25.0 and run("a", 20.0, "max").better_pct == 20.0
    assert run("a", None).better_pct == 0.0 and run("a", 0.0).better_pct == 0.0
    lines = verdict([run("lineage", -30.0), run("lineage", -10.0), run("lineage", -25.0), run("no-lineage", -22.0)])
    assert "- lineage: median improvement 25.0% (in the task's direction)" in lines
    assert "- target, lineage improves by at least 20%: met" in lines
    assert "- lineage beats no-lineage on the median: yes" in lines


def test_unknown_arms_are_refused(tmp_path):
    command = [sys.executable, "-m", "arx", "bench", "research", "--arms", "lineage,nope", "--no-write"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--arms takes" in done.stderr
