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
import shutil
import signal
import socket
import tempfile
import time
import traceback
from pathlib import Path

import anyio
import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from bus import queue, subjects
from bus.connection import Bus
from bus.events import (
    CampaignStarted,
    Event,
    Evidence,
    ReplicateFinished,
    StopRules,
    TrialAbandoned,
    TrialConfirmationRequested,
    TrialFinished,
    TrialScored,
    UnknownEvent,
    _RunFinished,
    decode_stored,
    replicate_id,
)
from bus.logs import setup_logging
from evaluators import labels
from evaluators.campaign import stop_campaign
from evaluators.sandbox import SandboxPool, SandboxResult
from evaluators.official_log import evaluate_log
from evaluators.spec import Task, TaskSpec, campaign_task
from evaluators.unpack import UnsafeArtifact, unpack_artifact
from projections import reads, stop_rules, views
from projections.follow import LiveLineage, catch_up

log = logging.getLogger("arx.evaluator")

QUEUE = "evaluators"
# How long the background lineage may lag behind a delivered message before we read the log ourselves.
LINEAGE_LAG_S = 5.0
CAMPAIGN_CHECK_S = 5.0
RERUN_POLL_S = 0.5
# A confirmation's reruns wait in the executors' queue behind up to this many runs' worth of trials.
CONFIRM_QUEUE_RUNS = 10
RUN_OVERHEAD_S = 30.0  # per run: materialize, prepare, upload


def confirmation_timeout(spec: TaskSpec, runs: int) -> float:
    """How long a candidate may wait for its reruns before it is left unconfirmed."""
    per_run = spec.budgets.train_s + spec.budgets.eval_s + RUN_OVERHEAD_S
    return (runs + CONFIRM_QUEUE_RUNS) * per_run


def to_evaluation(task: Task, result: SandboxResult, targets, artifact_dir: Path) -> labels.Evaluation:
    """Score the sandbox's outputs against the held-out targets, here in the evaluator's process."""
    if result.timed_out:
        return labels.Evaluation(failed="eval_budget", wall_s=result.wall_s)
    if result.outputs is None:
        return labels.Evaluation(failed="evaluate", error=result.error, root=str(artifact_dir.resolve()),
                                 signal=result.signal, wall_s=result.wall_s)
    try:
        measured = task.module().metrics(result.outputs, targets)
        metrics = {str(k): float(v) for k, v in measured.items()}
    except Exception:  # outputs the task cannot score are the model's failure
        return labels.Evaluation(failed="evaluate", error=traceback.format_exc(), wall_s=result.wall_s)
    return labels.Evaluation(metrics=metrics, wall_s=result.wall_s)


async def evaluate_artifact(pool: SandboxPool, task: Task, data: bytes, inputs, targets, *, name: str
                            ) -> labels.Evaluation:
    """Unpack a packed artifact (refusing unsafe members) and score it in the task's sandbox."""
    artifact_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=pool.root))
    try:
        try:
            await asyncio.to_thread(unpack_artifact, data, artifact_dir)
        except UnsafeArtifact as exc:
            return labels.Evaluation(failed="artifact", error=str(exc))
        result = await pool.run(task, artifact_dir, inputs)
        return to_evaluation(task, result, targets, artifact_dir)
    finally:
        shutil.rmtree(artifact_dir, ignore_errors=True)


class Evaluator:
    def __init__(self, bus: Bus, live: LiveLineage, pool: SandboxPool, name: str):
        self.bus = bus
        self.live = live
        self.pool = pool
        self.name = name
        self.skipped = 0  # undecodable or unexpected messages, acked and left alone
        self.outcomes = 0
        self._tasks: dict[str, Task] = {}
        self._heldout: dict[str, asyncio.Future] = {}
        self._stopping: set[str] = set()
        self._rules: dict[str, StopRules] = {}
        self._broken_tasks: set[str] = set()  # campaigns whose task this host cannot load

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
        task = self.task(campaign)
        evaluation = await self.evaluate(task, finished) if labels.scorable(finished) else None
        # Outcomes written since the trial finished may have moved the incumbent.
        await self._caught_up(await self.bus.last_seq())
        incumbent = views.incumbent(self.live.lineage, finished.campaign_id, task.spec.direction)
        noise = campaign["noise"] or 0.0
        verdict = labels.label(finished, task.spec, evaluation, incumbent, noise)
        if verdict.label == "keep" and labels.needs_confirmation(task.spec, verdict.score, incumbent, noise):
            verdict = await self.confirm(task, finished, verdict, incumbent.trial_id, noise)
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
        )

    async def confirm(self, task: Task, finished: TrialFinished, first: labels.Verdict, incumbent_id: str,
                      noise: float) -> labels.Verdict:
        """Ask the executors to rerun the candidate and the incumbent interleaved, then judge the reruns."""
        c, candidate = finished.campaign_id, finished.trial_id
        request = TrialConfirmationRequested(
            campaign_id=c, producer=self.name, causation_id=finished.event_id,
            trial_id=candidate, incumbent_id=incumbent_id, runs=labels.confirmation_runs(candidate, incumbent_id),
        )
        await self.bus.publish(request)
        # For a redelivered trial, the reruns asked for the first time are the ones that count.
        request = await self.bus.last_event(request.subject)
        timeout = confirmation_timeout(task.spec, len(request.runs))
        deadline = time.monotonic() + timeout
        runs = []
        for index, trial_id in enumerate(request.runs):
            rerun = await self._rerun(c, candidate, index, deadline)
            if rerun is None:
                return labels.unconfirmed(first, f"rerun {index} did not finish within {timeout:.0f}s")
            evaluation = await self.evaluate(task, rerun) if labels.scorable(rerun) else None
            runs.append((trial_id, labels.judge(rerun, task.spec, evaluation)))
        return labels.confirm(task.spec, first, runs, candidate, request.incumbent_id, noise)

    async def _rerun(self, c: str, candidate: str, index: int, deadline: float) -> ReplicateFinished | None:
        subject = subjects.replicate(c, replicate_id(candidate, index))
        while (rerun := await self.bus.last_event(subject)) is None:
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(RERUN_POLL_S)
        return rerun

    def task(self, campaign: dict) -> Task:
        """The campaign's task, by the spec its CampaignStarted recorded (views.campaign's row)."""
        c = campaign["campaign_id"]
        if c not in self._tasks:
            self._tasks[c] = campaign_task(campaign["task"], campaign["spec"])
        return self._tasks[c]

    def _heldout_future(self, task: Task) -> asyncio.Future:
        """The task's held-out inputs and targets, computed once per task, off the event loop."""
        if task.name not in self._heldout:
            self._heldout[task.name] = asyncio.ensure_future(asyncio.to_thread(task.module().heldout))
        return self._heldout[task.name]

    async def heldout(self, task: Task):
        try:
            return await asyncio.shield(self._heldout_future(task))
        except Exception:
            self._heldout.pop(task.name, None)  # try again for the next trial
            raise

    async def evaluate(self, task: Task, finished: _RunFinished) -> labels.Evaluation:
        if task.spec.scored_from == "log":  # official tasks: the captured log is the official output
            return await evaluate_log(self.bus, task, finished)
        if finished.artifact is None:
            return labels.Evaluation(failed="artifact", error="the run produced no artifact")
        try:
            data = await self.bus.get_object(finished.artifact)
        except (NotFoundError, ValueError) as exc:
            return labels.Evaluation(failed="artifact", error=f"artifact {finished.artifact.name}: {exc}")
        inputs, targets = await self.heldout(task)
        return await evaluate_artifact(self.pool, task, data, inputs, targets, name=finished.trial_id)

    # -- campaigns ----------------------------------------------------------------------------

    async def watch_campaigns(self) -> None:
        """On every lineage change: stop campaigns whose budget is spent, warm sandboxes for the rest.

        Outcomes this evaluator did not write (rejected or abandoned trials) count too, so the check
        follows the lineage rather than our own publishes.
        """
        while True:
            seen = self.live.lineage.checkpoint
            try:
                for running in reads.running_campaigns(self.live.lineage):
                    await self._check_campaign(running)
            except Exception:  # a failed publish: the next lineage change tries again
                log.exception("campaign check failed")
            if self.live.lineage.checkpoint == seen:
                await self.live.changed(timeout=CAMPAIGN_CHECK_S)

    async def _check_campaign(self, running: reads.Running) -> None:
        campaign_id = running.campaign_id
        if campaign_id in self._stopping:  # until the lineage shows the stop
            return
        counted = views.counted_outcomes(self.live.lineage, campaign_id)
        reason = "max_trials reached" if counted >= running.max_trials else await self._rule_broken(running)
        if reason is None:
            self._prepare(campaign_id)
            return
        await stop_campaign(self.bus, campaign_id, reason, producer=self.name, trials=counted)
        self._stopping.add(campaign_id)
        log.info("campaign %s stopped after %d of %d trials: %s", campaign_id, counted, running.max_trials, reason)

    async def _rule_broken(self, running: reads.Running) -> str | None:
        """The stop rule the campaign's outcomes (or its clock) break, if any."""
        rules = await self._stop_rules(running.campaign_id)
        if rules == StopRules():
            return None
        return stop_rules.stop_reason(rules, stop_rules.recent(self.live.lineage, running.campaign_id, rules))

    async def _stop_rules(self, campaign_id: str) -> StopRules:
        """The rules CampaignStarted declared (the lineage keeps no copy of them), read once per campaign."""
        if campaign_id not in self._rules:
            started = await self.bus.last_event(subjects.campaign(campaign_id, "started"))
            self._rules[campaign_id] = started.stop_rules if isinstance(started, CampaignStarted) else StopRules()
        return self._rules[campaign_id]

    def _prepare(self, campaign_id: str) -> None:
        """Start the sandbox process and the held-out data before the campaign's first trial arrives."""
        if campaign_id in self._broken_tasks:
            return
        campaign = views.campaign(self.live.lineage, campaign_id)
        try:
            task = self.task(campaign)
        except ValueError as exc:
            self._broken_tasks.add(campaign_id)
            log.error("cannot prepare the task of campaign %s: %s", campaign_id, exc)
            return
        if task.spec.scored_from == "log":  # no held-out data, no sandbox: the log is parsed here
            return
        self.pool.warm(task)
        self._heldout_future(task)


async def run_evaluator(bus: Bus, *, name: str, stop=None, pool: SandboxPool | None = None) -> None:
    """Evaluate until `stop` (anything with an awaitable wait()) is set, or forever if it is None.

    The sandbox pool is made here unless given (a caller that wants to see it warm passes its own);
    either way it is closed on the way out.
    """
    live = LiveLineage(bus)
    pool = pool or SandboxPool()
    evaluator = Evaluator(bus, live, pool, name)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(live.run)
            group.start_soon(evaluator.watch_campaigns)
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
