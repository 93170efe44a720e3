"""The whole loop through separate OS processes on a real nats-server: digits-speedrun, end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cluster import ROOT, Cluster
from bus.local import free_port


def test_campaign_runs_end_to_end_and_scores_every_trial(arx_env, tmp_path):
    cluster = Cluster(arx_env, tmp_path / "logs")
    try:
        cluster.start("evaluator", "evaluator", "--name", "evaluator-1")
        cluster.start("executor", "executor", "--name", "executor-1")
        started = cluster.arx("campaign", "start", "--task", "digits-speedrun", "--trials", "3", "--campaign", "e2e")
        assert started.returncode == 0, started.stderr
        cluster.start("agent", "agent", "--specialist", "tpe-optimizer", "--surface", "optimizer", "--campaign", "e2e")

        summary = cluster.wait_stopped("e2e", timeout=300)
    finally:
        cluster.stop_all()

    assert summary["trials_proposed"] == 3
    assert sum(summary["labels"].values()) == 3, summary
    assert summary["trials_scored"] == 3
    assert summary["baseline_score"] is not None and summary["baseline_score"] > 0
    assert summary["labels"].get("keep", 0) >= 1  # the baseline is the first incumbent
    assert summary["best_trial"] is not None


def test_up_script_runs_a_campaign_and_down_stops_exactly_what_it_started(tmp_path):
    home = tmp_path / "arx-home"
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("ARX_", "NATS_"))
    } | {"ARX_HOME": str(home), "NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    bystander = subprocess.Popen(["sleep", "300"])  # a process up.sh did not start
    try:
        up = subprocess.run(
            [str(ROOT / "scripts/up.sh"), "--trials", "2", "--wait"],
            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
        )
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        pids = {p.stem: int(p.read_text()) for p in (home / "pids").glob("*.pid")}
        assert {"nats-server", "projector", "evaluator-1", "executor-1"} <= set(pids)

        status = subprocess.run(
            [str(ROOT / ".venv/bin/arx"), "status", "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert '"trials_scored": 2' in status.stdout

        # The second time: the same processes, a second campaign on the same stream, which must finish too.
        again = subprocess.run(
            [str(ROOT / "scripts/up.sh"), "--trials", "3", "--wait", "--budget-usd", "100",
             "--budget-device-hours", "cpu=50"],
            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "reusing projector" in again.stdout and "started campaign" in again.stdout
        second = json.loads(subprocess.run(
            [str(ROOT / ".venv/bin/arx"), "status", "--json"], env=env, capture_output=True, text=True, timeout=60
        ).stdout)
        # Its specialists share the 3 trials, the baseline included, through slots nats-server hands out
        # once each: not one more is counted (a trial the harness abandoned is replaced, not counted).
        counted = sum(second["labels"].values()) - second["labels"].get("harness_abort", 0)
        assert second["stopped"] and counted == 3 and second["in_flight"] == 0, second
        assert second["baseline_score"] is not None and second["skipped_events"] == {}
        # up.sh passed the budgets on; the ledger has the runs' CPU time, priced at the default $0.
        assert [(b["budget"], b["limit"]) for b in second["budgets"]] == [("usd", 100.0), ("cpu_hours", 50.0)]
        assert second["ledger"]["device_s"]["cpu"] > 0 and second["ledger"]["total_usd"] == 0.0

        down = subprocess.run([str(ROOT / "scripts/down.sh")], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        for name, pid in pids.items():
            assert not _alive(pid), f"{name} (pid {pid}) still running after down.sh"
        assert bystander.poll() is None
    finally:
        subprocess.run([str(ROOT / "scripts/down.sh")], env=env, capture_output=True, timeout=120)
        bystander.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours has exited; it only waits to be reaped.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")
