"""A bad setup is one line on stderr and a non-zero exit, never a traceback or a hang."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import nkeys
import pytest

from bus.local import ROOT, free_port
from bus.server import start_server, wait_reachable


def arx(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "arx.py"), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def one_line_error(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0]
    return lines[0]


@pytest.fixture
def not_nats():
    """A loopback listener that answers like a web server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"nats://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.parametrize("command", [("status",), ("campaign", "start", "--task", "tiny")])
def test_a_url_that_is_not_nats(arx_env, not_nats, command):
    one_line_error(arx({**arx_env, "NATS_URL": not_nats}, *command), "cannot connect to", "INFO")


@pytest.mark.parametrize("command", [("status",), ("campaign", "start", "--task", "tiny"), ("export", "--campaign", "c1", "x")])
def test_a_server_without_jetstream(arx_env, tmp_path, command):
    port = free_port()
    server = start_server(_config(tmp_path, f"listen: 127.0.0.1:{port}\n"), tmp_path / "plain.log")
    try:
        wait_reachable(f"nats://127.0.0.1:{port}")
        one_line_error(arx({**arx_env, "NATS_URL": f"nats://127.0.0.1:{port}"}, *command), "runs no JetStream")
    finally:
        server.kill()
        server.wait()


def test_a_credential_the_server_does_not_know(arx_env, tmp_path):
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))  # valid, but unknown
    line = one_line_error(arx({**arx_env, "ARX_CREDENTIALS": str(stranger)}, "status"), "cannot connect to")
    assert "authorization violation" in line.lower() and "stranger.nk" in line


def test_a_credential_file_that_holds_no_seed(arx_env, tmp_path):
    garbage = tmp_path / "garbage.nk"
    garbage.write_text("not a seed\n")
    one_line_error(arx({**arx_env, "ARX_CREDENTIALS": str(garbage)}, "status"), "garbage.nk is no nkey seed file")


def test_a_sync_interval_nats_server_would_not_take(arx_env, tmp_path):
    env = {**arx_env, "ARX_SYNC_INTERVAL": "bogus", "NATS_URL": f"nats://127.0.0.1:{free_port()}",
           "ARX_HOME": str(tmp_path / "home")}
    one_line_error(arx(env, "server"), "ARX_SYNC_INTERVAL='bogus'", "duration")


def test_a_device_price_for_a_kind_arx_does_not_count(arx_env):
    """A misspelt kind would otherwise price the campaign's GPU time at $0 without a word."""
    env = {**arx_env, "ARX_DEVICE_PRICES": '{"gpu": 2.5}'}
    one_line_error(arx(env, "campaign", "start", "--task", "tiny"), "ARX_DEVICE_PRICES", "unknown device kind gpu")


def _config(tmp_path, text: str):
    path = tmp_path / "plain.conf"
    path.write_text(text)
    return path
