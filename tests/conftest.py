"""Every test run gets its own real nats-server on a free loopback port with a temporary store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bus.local import LocalServer

ROOT = Path(__file__).resolve().parent.parent
SEED_RUNS = ROOT.parent / "shared" / "seed-runs"


@pytest.fixture
def nats_server(tmp_path):
    """A fresh server per test (it starts in well under a second): no state leaks between tests."""
    server = LocalServer(tmp_path / "nats").start()
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
