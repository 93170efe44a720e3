"""The loop's roles as real OS processes for a test, with the waits tests need on top."""

from __future__ import annotations

import json
import time

from bus.local import ROOT, Roles

__all__ = ["ROOT", "Cluster"]


class Cluster(Roles):
    def arx(self, *args: str, timeout: float = 120):
        return self.run(*args, timeout=timeout)

    def status(self, campaign: str | None = None) -> dict:
        return json.loads(self.command("status", "--json", *(["--campaign", campaign] if campaign else [])))

    def wait_stopped(self, campaign: str, timeout: float) -> dict:
        """The campaign's summary once it stopped with nothing in flight; fails fast if a role dies."""
        deadline = time.monotonic() + timeout
        summary = None
        while time.monotonic() < deadline:
            summary = self.status(campaign)
            if summary["stopped"] and summary["in_flight"] == 0:
                return summary
            if failed := self.failed():
                raise RuntimeError(f"{failed[0]} exited with an error: {self.log(failed[0])[-2000:]}")
            time.sleep(1.0)
        raise TimeoutError(f"campaign {campaign} did not stop within {timeout:.0f}s: {summary}")

    def run_tiny_campaign(self, campaign: str, trials: int = 4, timeout: float = 180) -> dict:
        """A campaign of the tiny test task run to its stop by a real evaluator, executor and TPE agent,
        which are stopped before it returns; its summary."""
        try:
            self.start("evaluator", "evaluator", "--name", "evaluator-1")
            self.start("executor", "executor", "--name", "executor-1")
            self.command("campaign", "start", "--task", "tiny", "--trials", str(trials), "--campaign", campaign)
            self.start("agent", "agent", "--specialist", "tpe-main", "--surface", "main", "--campaign", campaign)
            return self.wait_stopped(campaign, timeout)
        finally:
            self.stop_all()
