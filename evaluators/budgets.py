"""Watching the running campaigns: stop each one when its trial count or another budget is spent
(projections/ledger.py) or a stop rule breaks (projections/stop_rules.py), and warm the scorer for
the rest. Outcomes this evaluator did not write (rejected or abandoned trials) count too, so the
watch follows the lineage rather than its own publishes."""

from __future__ import annotations

import logging

from bus.connection import Bus
from bus.events import StopRules
from evaluators.campaign import stop_campaign
from evaluators.scoring import Scorer
from projections import ledger, reads, stop_rules, views
from projections.follow import LiveLineage

log = logging.getLogger("arx.evaluator")

CAMPAIGN_CHECK_S = 5.0


class BudgetWatch:
    def __init__(self, bus: Bus, live: LiveLineage, scorer: Scorer, name: str):
        self.bus = bus
        self.live = live
        self.scorer = scorer
        self.name = name
        self._stopping: set[str] = set()  # until the lineage shows the stop
        self._broken_tasks: set[str] = set()  # campaigns whose task this host cannot load

    async def run(self) -> None:
        """Check every running campaign on each lineage change (or every CAMPAIGN_CHECK_S, for deadlines)."""
        while True:
            seen = self.live.lineage.checkpoint
            try:
                for running in reads.running_campaigns(self.live.lineage):
                    await self._check(running)
            except Exception:  # a failed publish: the next lineage change tries again
                log.exception("campaign check failed")
            if self.live.lineage.checkpoint == seen:
                await self.live.changed(timeout=CAMPAIGN_CHECK_S)

    async def _check(self, running: reads.Running) -> None:
        campaign_id = running.campaign_id
        if campaign_id in self._stopping:
            return
        counted = views.counted_outcomes(self.live.lineage, campaign_id)
        reason = "max_trials reached" if counted >= running.max_trials else self._reason(campaign_id)
        if reason is None:
            self._prepare(campaign_id)
            return
        await stop_campaign(self.bus, campaign_id, reason, producer=self.name, trials=counted)
        self._stopping.add(campaign_id)
        log.info("campaign %s stopped after %d of %d trials: %s", campaign_id, counted, running.max_trials, reason)

    def _reason(self, campaign_id: str) -> str | None:
        """The budget the campaign has spent, or the stop rule its outcomes (or its clock) break, if any."""
        lineage = self.live.lineage
        camp = views.campaign(lineage, campaign_id)
        if reason := ledger.budget_spent(lineage, camp):
            return reason
        if camp.stop_rules == StopRules():
            return None
        return stop_rules.stop_reason(camp.stop_rules, stop_rules.recent(lineage, camp))

    def _prepare(self, campaign_id: str) -> None:
        """Warm the campaign's sandbox and held-out data before its first trial arrives."""
        if campaign_id in self._broken_tasks:
            return
        try:
            task = self.scorer.task(views.campaign(self.live.lineage, campaign_id))
        except ValueError as exc:
            self._broken_tasks.add(campaign_id)
            log.error("cannot prepare the task of campaign %s: %s", campaign_id, exc)
            return
        self.scorer.warm(task)
