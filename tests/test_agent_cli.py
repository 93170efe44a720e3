"""`arx agent` as its own process: exit 0 when the campaign stops, 128+signal on SIGTERM, 1 on bad input."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import anyio
import pytest
from agent_helpers import score, start_campaign, stop_campaign, wait_for_trials

from agents.registry import POLICIES
from bus.connection import Bus

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


def agent_process(env, python, *args: str) -> subprocess.Popen:
    command = [python, "-m", "arx", "agent", "--policy", "tpe", "--specialist", "tpe-cli", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def exit_status(proc: subprocess.Popen, timeout: float = 20.0) -> tuple[int, str]:
    out, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=timeout))
    return proc.returncode, out


async def test_proposes_and_exits_0_when_the_campaign_stops(arx_env, python):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        await score(bus, "c1", "baseline", 10.0)
        proc = agent_process(arx_env, python, "--surface", "optimizer", "--seed", "3")
        try:
            (row,) = await wait_for_trials(bus, "c1", "tpe-cli", 1, timeout=30)
            assert row["policy"] == "tpe" and row["parent_id"] == "baseline"
            await stop_campaign(bus, "c1")
            status, out = await exit_status(proc)
        finally:
            proc.kill()
        assert status == 0, out
        assert f"proposed {row['trial_id']}" in out


async def test_sigterm_while_waiting_for_a_campaign_exits_143(arx_env, python):
    proc = agent_process(arx_env, python, "--surface", "optimizer")
    try:
        with anyio.fail_after(30):
            while "waiting for a campaign" not in (line := await anyio.to_thread.run_sync(proc.stdout.readline)):
                assert line, "the agent exited before waiting"
        proc.send_signal(signal.SIGTERM)
        status, out = await exit_status(proc)
    finally:
        proc.kill()
    assert status == 128 + signal.SIGTERM, out


async def test_an_unknown_surface_exits_1_with_the_reason(arx_env, python):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
    proc = agent_process(arx_env, python, "--surface", "nonsense", "--campaign", "c1")
    try:
        status, out = await exit_status(proc)
    finally:
        proc.kill()
    assert status == 1
    assert "no surface 'nonsense'" in out


MY_POLICIES = '''
from agents.base import Specialist


def helper():
    pass


class Mine(Specialist):
    policy = "mine"
'''


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ("nosuch:Mine", "--policy nosuch:Mine: no module 'nosuch' in the current directory or on PYTHONPATH"),
        ("broken:Mine", "--policy broken:Mine: importing 'broken' failed: No module named 'missing_dependency'"),
        ("mine:Other", "--policy mine:Other: module 'mine' ("),
        ("mine:helper", "--policy mine:helper: helper is not a subclass of agents.base.Specialist"),
        ("agents.base:Specialist", "Specialist is not a subclass of agents.base.Specialist"),
        ("mine:", "--policy 'mine:': give module:Class"),
        ("mine", f"unknown policy 'mine'; known: {', '.join(sorted(POLICIES))}, or module:Class"),
    ],
)
def test_a_bad_policy_is_one_line_naming_what_is_wrong(arx_env, python, tmp_path, policy, error):
    """Run from a folder holding mine.py (a Specialist subclass and a function) and broken.py (whose import fails)."""
    (tmp_path / "mine.py").write_text(MY_POLICIES)
    (tmp_path / "broken.py").write_text("import missing_dependency\n")
    done = subprocess.run([python, "-m", "arx", "agent", "--policy", policy, "--specialist", "s", "--surface", "main"],
                          cwd=tmp_path, env=arx_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1 and error in done.stderr, done.stderr


def test_help_lists_the_built_in_policies(python):
    done = subprocess.run([python, "-m", "arx", "agent", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    assert f"a built-in policy ({', '.join(sorted(POLICIES))}; default: tpe)" in " ".join(done.stdout.split())
