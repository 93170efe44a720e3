"""`arx agent` as its own process: exit 0 when the campaign stops, 128+signal on SIGTERM, 1 on bad input."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import anyio
import pytest
from agent_helpers import score, start_campaign, stop_campaign, wait_for_trials

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
