"""Run arx roles as real, separate OS processes against one nats-server (for tests and benchmarks)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Cluster:
    def __init__(self, env: dict[str, str], logs: Path):
        self.env = env
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def arx(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run one arx command to completion."""
        return subprocess.run(
            [sys.executable, str(ROOT / "arx.py"), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        )

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Start a long-running role in the background, its output in logs/<name>.log."""
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "arx.py"), *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def status(self, campaign: str | None = None) -> dict:
        args = ["status", "--json"] + (["--campaign", campaign] if campaign else [])
        done = self.arx(*args)
        if done.returncode != 0:
            raise RuntimeError(f"arx status failed: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def wait_stopped(self, campaign: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            summary = self.status(campaign)
            if summary["stopped"] and summary["in_flight"] == 0:
                return summary
            for name, proc in self.procs.items():
                if proc.poll() not in (None, 0):
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log(name)[-2000:]}")
            time.sleep(1.0)
        raise TimeoutError(f"campaign {campaign} did not stop within {timeout:.0f}s: {summary}")

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
