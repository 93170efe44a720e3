"""`arx evaluator`: score finished trials, label their outcomes, and stop campaigns at their budget.

Finished trials come from the shared durable consumer "evaluators", so evaluators split the work and a
trial whose evaluator dies is delivered again. A LiveLineage folded in the background tells each one
the campaign, the incumbent and how many outcomes count against the budget. Every delivered trial
ends in exactly one outcome event: a TrialScored with a label, or a TrialAbandoned (harness_abort) when
the evaluator itself could not judge it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import time

import anyio
import msgspec
from nats.errors import Error as NatsError

from bus import queue, subjects
from bus.connection import Bus
from bus.events import Event, Evidence, TrialAbandoned, TrialFinished, TrialScored, UnknownEvent, decode_stored
from bus.logs import setup_logging
from evaluators import labels
from evaluators.budgets import BudgetWatch
from evaluators.confirmation import confirm
from evaluators.sandbox import SandboxPool
from evaluators.scoring import Scorer
from projections import reads, views
from projections.follow import LiveLineage, catch_up

log = logging.getLogger("arx.evaluator")

QUEUE = "evaluators"
# How long the background lineage may lag behind a delivered message before we read the log ourselves.
LINEAGE_LAG_S = 5.0


class Evaluator:
    """Takes finished trials from the queue and writes one outcome for each."""

    def __init__(self, bus: Bus, live: LiveLineage, scorer: Scorer, name: str):
        self.bus = bus
        self.live = live
        self.scorer = scorer
        self.name = name
        self.skipped = 0  # undecodable or unexpected messages, acked and left alone
        self.outcomes = 0

    # -- the work queue -----------------------------------------------------------------------

    async def consume(self) -> None:
        await queue.work(await self.bus.durable(QUEUE, subjects.FINISHES), self.handle)

    async def handle(self, msg) -> None:
        received = time.monotonic()
        try:
            event = decode_stored(msg.subject, msg.data)
        except (UnknownEvent, msgspec.DecodeError, ValueError) as exc:
            event, reason = None, repr(exc)
        else:
            reason = f"unexpected {type(event).__name__}"
        if not isinstance(event, TrialFinished):
            self.skipped += 1
            log.warning("skipping message %d on %s: %s", msg.metadata.sequence.stream, msg.subject, reason)
            await msg.ack()
            return
        # A long evaluation keeps its message, so it is not handed to another evaluator.
        async with queue.heartbeat(msg, max(self.bus.settings.ack_wait_s / 3, 0.5)):
            await self._caught_up(msg.metadata.sequence.stream)
            if self._has_outcome(event):
                await msg.ack()  # a redelivery after an outcome was written
                return
            outcome = await self.outcome(event)
            written = await self.bus.publish(outcome)
        await msg.ack()
        self.outcomes += 1
        log.info("%s %s/%s: %s in %.3fs%s", type(outcome).__name__, event.campaign_id, event.trial_id,
                 outcome.label, time.monotonic() - received, "" if written else " (another outcome was first)")

    async def _caught_up(self, seq: int) -> None:
        """Wait until the lineage holds every event up to seq; if the follower lags, read the log here."""
        if not await self.live.wait_for(seq, timeout=LINEAGE_LAG_S):
            log.warning("lineage at %d behind %d after %.0fs: catching up directly",
                        self.live.lineage.checkpoint, seq, LINEAGE_LAG_S)
            await catch_up(self.bus, self.live.lineage)

    def _has_outcome(self, event: TrialFinished) -> bool:
        return reads.has_outcome(self.live.lineage, event.campaign_id, event.trial_id)

    # -- one trial ----------------------------------------------------------------------------

    async def outcome(self, finished: TrialFinished) -> Event:
        """The trial's outcome event. Raises only when the bus fails (the trial is then delivered again);
        any other problem with this one trial becomes its labelled outcome."""
        try:
            return await self._scored(finished)
        except NatsError:
            raise
        except Exception as exc:  # the harness's fault, not the trial's: say so and go on
            log.exception("cannot judge %s/%s", finished.campaign_id, finished.trial_id)
            return TrialAbandoned(
                campaign_id=finished.campaign_id, producer=self.name,
                causation_id=finished.event_id, trial_id=finished.trial_id,
                evidence=Evidence(stage="evaluator", message=f"{type(exc).__name__}: {exc}"[:2000]),
            )

    async def _scored(self, finished: TrialFinished) -> TrialScored:
        campaign = views.campaign(self.live.lineage, finished.campaign_id)
        if campaign is None:
            raise LookupError(f"campaign {finished.campaign_id} has no CampaignStarted in the log")
        task = self.scorer.task(campaign)
        evaluation = await self.scorer.evaluate(task, finished) if labels.scorable(finished) else None
        # Outcomes written since the trial finished may have moved the incumbent.
        await self._caught_up(await self.bus.last_seq())
        incumbent = views.incumbent(self.live.lineage, finished.campaign_id, task.spec.direction)
        noise = campaign.noise or 0.0
        verdict = labels.label(finished, task.spec, evaluation, incumbent, noise)
        eval_s = evaluation.wall_s if evaluation else 0.0
        if verdict.label == "keep" and labels.needs_confirmation(task.spec, verdict.score, incumbent, noise):
            verdict, rerun_s = await confirm(self.bus, self.scorer, task, finished, verdict,
                                             incumbent_id=incumbent.trial_id, noise=noise, producer=self.name)
            eval_s += rerun_s
        metrics = evaluation.metrics if evaluation else {}
        return TrialScored(
            campaign_id=finished.campaign_id, producer=self.name,
            causation_id=finished.event_id, trial_id=finished.trial_id, label=verdict.label,
            evidence=verdict.evidence, score=verdict.score, gates=verdict.gates,
            # JSON has no NaN: a non-finite metric would make the event unreadable.
            metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
            incumbent_id=incumbent.trial_id if incumbent else None,
            incumbent_score=verdict.incumbent_score if verdict.incumbent_score is not None
            else incumbent.score if incumbent else None,
            noise=noise,
            eval_s=round(eval_s, 3),
        )


async def run_evaluator(bus: Bus, *, name: str, stop=None, pool: SandboxPool | None = None) -> None:
    """Evaluate until `stop` (anything with an awaitable wait()) is set, or forever if it is None.

    The sandbox pool is made here unless given (a caller that wants to see it warm passes its own);
    either way it is closed on the way out.
    """
    live = LiveLineage(bus)
    pool = pool or SandboxPool()
    scorer = Scorer(bus, pool)
    evaluator = Evaluator(bus, live, scorer, name)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(live.run)
            group.start_soon(BudgetWatch(bus, live, scorer, name).run)
            group.start_soon(evaluator.consume)
            if stop is not None:
                await stop.wait()
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await pool.close()


async def _main(name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bus = await Bus.connect(role="evaluator", name=name)
    try:
        log.info("%s evaluating %s from %s", name, subjects.FINISHES, bus.settings.stream)
        await run_evaluator(bus, name=name, stop=stop)
    finally:
        await bus.close()


def cli_arguments(parser) -> None:
    parser.add_argument("--name", help="evaluator name (default: evaluator-<host>-<pid>)")


def cli(args) -> int:
    name = args.name or f"evaluator-{socket.gethostname()}-{os.getpid()}"
    setup_logging()
    asyncio.run(_main(name))
    return 0
