"""Every test run gets its own real nats-server on a free loopback port with a temporary store."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from bus.server import start_server, wait_reachable, write_config

ROOT = Path(__file__).resolve().parent.parent
SEED_RUNS = ROOT.parent / "shared" / "seed-runs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NatsServer:
    """A real nats-server that a test can kill and restart on the same port and store."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.config = root / "nats.conf"
        write_config(self.config, port=self.port, store_dir=root / "store", sync_interval="2m")
        self.proc = None

    def start(self) -> None:
        self.proc = start_server(self.config, self.root / "nats.log")
        wait_reachable(self.url)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def nats_server(tmp_path):
    """A fresh server per test (it starts in well under a second): no state leaks between tests."""
    root = tmp_path / "nats"
    root.mkdir()
    server = NatsServer(root)
    server.start()
    yield server
    if server.proc.poll() is None:
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
