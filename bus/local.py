"""A private arx cluster on this host: its own nats-server and arx roles as separate OS processes.

Benchmarks and tests use it to run the real loop in isolation (a temporary store on a free port).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import msgspec

from bus.server import Node, provision, start_server, wait_reachable, write_config
from bus.settings import Settings
from bus.tls import ensure_node_cert

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """A nats-server with its store under root, which can be killed and started again on the same port.

    Its role credentials are written under `home` (ARX_HOME of the processes that use it), where every
    arx process finds its own. Given a `node` (a cluster's member, or one that speaks TLS), it runs as that."""

    def __init__(self, root: Path, *, home: Path, sync_interval: str = "2m", node: Node | None = None):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.node = node or Node(listen=f"127.0.0.1:{free_port()}")
        self.port = self.node.port
        self.url = self.node.client_url
        self.config = root / "nats.conf"
        self.settings = Settings(home=home, sync_interval=sync_interval, nats_url=self.url, tls_ca=self.node.tls_ca)
        write_config(self.config, self.settings, self.node, store_dir=root / "store")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LocalServer":
        self.proc = start_server(self.config, self.root / "nats.log")
        wait_reachable(self.url)
        if not self.node.cluster:
            provision(self.settings, self.url)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class LocalCluster:
    """`size` nats-server nodes routed into one JetStream cluster on loopback ports, sharing one home's
    credentials; the stream and the object store get `size` replicas (at most 3)."""

    def __init__(self, root: Path, *, home: Path, size: int = 3, tls: bool = False):
        cluster_ports = [free_port() for _ in range(size)]
        routes = tuple(f"127.0.0.1:{port}" for port in cluster_ports)
        self.servers = []
        for i, cluster_port in enumerate(cluster_ports):
            name = f"n{i + 1}"
            cert, key = ensure_node_cert(home / "tls", name, ["127.0.0.1"]) if tls else (None, None)
            node = Node(listen=f"127.0.0.1:{free_port()}", name=name, cluster="arx-test",
                        cluster_listen=f"127.0.0.1:{cluster_port}", routes=routes,
                        tls_cert=cert, tls_key=key, tls_ca=home / "tls" / "ca.pem" if tls else None)
            self.servers.append(LocalServer(root / name, home=home, node=node))
        self.url = ",".join(server.url for server in self.servers)
        self.settings = msgspec.structs.replace(self.servers[0].settings, nats_url=self.url,
                                                replicas=min(size, 3))

    def start(self) -> "LocalCluster":
        for server in self.servers:
            server.start()
        provision(self.settings, self.url)
        return self

    def kill(self) -> None:
        for server in self.servers:
            server.kill()


class Roles:
    """arx commands and long-running roles run with one environment, each role's output in logs/."""

    def __init__(self, env: dict[str, str], logs: Path, *, cwd: Path = ROOT):
        self.env = env
        self.logs = logs
        self.cwd = cwd
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def _argv(self, args: tuple[str, ...]) -> list[str]:
        return [sys.executable, str(ROOT / "arx.py"), *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run one arx command to completion."""
        return subprocess.run(
            self._argv(args), env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout
        )

    def command(self, *args: str, timeout: float = 120) -> str:
        """Run one arx command; its stdout, or RuntimeError with its stderr."""
        done = self.run(*args, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"arx {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start a long-running role in the background."""
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                self._argv(args), env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def failed(self) -> list[str]:
        """Roles that exited with an error (an agent exits 0 once its campaign stops)."""
        return [name for name, proc in self.procs.items() if proc.poll() not in (None, 0)]

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self, timeout: float = 15) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
