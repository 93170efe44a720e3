"""Every test run gets its own real nats-server on a free loopback port with a temporary store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import ScriptedServer

from bus.local import LocalServer

ROOT = Path(__file__).resolve().parent.parent
SEED_RUNS = ROOT.parent / "shared" / "seed-runs"
# The paper's released trajectories sit beside the repository (../shared), where CI has them; a plain
# clone does not, so the tests that read them skip there with one line. Under CI they never skip.
needs_seed_runs = pytest.mark.skipif(
    not SEED_RUNS.is_dir() and not os.environ.get("CI"),
    reason=f"needs the paper's released trajectories in {SEED_RUNS}, which this clone lacks",
)


@pytest.fixture
def nats_server(tmp_path):
    """A fresh server per test (it starts in well under a second): no state leaks between tests."""
    server = LocalServer(tmp_path / "nats", home=tmp_path / "arx-home").start()
    yield server
    server.kill()


@pytest.fixture
def arx_env(nats_server, tmp_path, monkeypatch):
    """Environment for arx code and child processes: this test's own server and home."""
    env = {
        "NATS_URL": nats_server.url,
        "ARX_HOME": str(tmp_path / "arx-home"),
        "ARX_ACK_WAIT_S": "5",
        "ARX_TASKS_PATH": str(ROOT / "tests" / "tasks"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **env, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB filesystem (a tmpfs) for a test to fill up; skipped where mounting is not permitted."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                                 text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (mounting needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True, timeout=30)


@pytest.fixture
def llm(arx_env, monkeypatch):
    """A scripted OpenAI-compatible endpoint (tests/openai_server.py), with OPENAI_BASE_URL pointing at
    it and short backoffs."""
    with ScriptedServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("ARX_LLM_BACKOFF_S", "0.01")
        monkeypatch.setenv("ARX_LLM_TIMEOUT_S", "5")
        yield server
