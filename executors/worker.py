"""`arx executor`: take proposed trials from the shared queue, run them, report what was measured.

Every executor process of a device class, on every host, pulls from that class's durable consumer,
so adding processes adds throughput, a trial whose executor dies is redelivered, and a trial runs
only where its task's devices are (executors/devices.py). The executor measures from outside and
never scores: TrialFinished carries time, memory, exit status, the log and the artifact's reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import dataclasses
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import traceback
from pathlib import Path

import anyio
import msgspec

from bus import queue, subjects
from bus.connection import Bus
from bus.edits import EditProblem, InvalidEdit, check_edit
from bus.events import (
    CampaignStarted,
    PREFLIGHT_STAGE,
    CampaignStopped,
    Evidence,
    ReplicateFinished,
    TrialAbandoned,
    TrialConfirmationRequested,
    TrialFinished,
    TrialProposed,
    TrialRejected,
    TrialStarted,
    UnknownEvent,
    decode_stored,
    oversize,
    replicate_id,
)
from bus.logs import setup_logging
from evaluators.spec import Task, TaskSpec, campaign_task, pack_folder
from executors import preflight
from executors.devices import CPU, Devices, device_class, parse_devices
from executors.measurement import DeviceSeconds, Measurement, limits_of, trial_limits
from executors.sandbox import Limits, RunResult, run_command
from executors.trees import CampaignRepo, materialize

log = logging.getLogger("arx.executor")

QUEUE = "executors"
# The executor's own writes failing with these ran out of the host's disk, file handles or memory.
HOST_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def queue_name(device_kind: str) -> str:
    """The durable consumer of one device class's executors ("executors" for CPUs, as it always was)."""
    return QUEUE if device_kind == CPU else f"{QUEUE}-{device_kind}"


class HostFault(Exception):
    """The host failed the trial, not the recipe: its disk is full, or it has no file handles or memory left."""


def host_fault_of(exc: BaseException) -> str | None:
    """The host's fault an exception is, in words: a HostFault, or an OSError of the executor's own (its
    log, the run dir, the artifact) for want of disk, file handles or memory; None for anything else."""
    if isinstance(exc, HostFault):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in HOST_ERRNOS:
        return f"host fault ({errno.errorcode[exc.errno]}) in the executor: {exc}"
    return None


def log_tail(path: Path, chars: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4 * chars))  # at most 4 bytes a character in UTF-8
        return handle.read().decode("utf-8", "replace")[-chars:] if chars > 0 else ""


@contextlib.contextmanager
def host_lock(path: Path):
    """Held by one process on this host at a time (fcntl: released even if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pinned_cores(count: int) -> tuple[int, ...]:
    """The CPUs a timed trial is pinned to: the host's core lock makes them its own among timed trials."""
    return tuple(sorted(os.sched_getaffinity(0))[-count:])


def pack_artifact(run_dir: Path, spec: TaskSpec) -> bytes | None:
    """The run's artifact: the run-dir files the task's `artifacts` globs match, or else what the
    recipe wrote into ARX_ARTIFACT_DIR; None when there is none."""
    if spec.artifacts:
        files = sorted({str(p.relative_to(run_dir)) for pattern in spec.artifacts for p in run_dir.glob(pattern)
                        if p.is_file() and not p.is_symlink()})
        return pack_folder(run_dir, [glob.escape(f) for f in files]) if files else None  # names, not globs
    artifact_dir = run_dir / "artifact"
    return pack_folder(artifact_dir) if artifact_dir.is_dir() and not artifact_dir.is_symlink() else None


def run_recipe(
    spec: TaskSpec, run_dir: Path, limits: Limits, log_path: Path, *, home: Path, devices: Devices = Devices(),
    command: list[str] | None = None, env: dict[str, str] | None = None,
) -> RunResult:
    """Run the task's command (or `command`, with `env` added to the task's) the way every trial runs, holding the host
    locks it needs; `arx noise` runs the baseline this way too."""
    # Timed trials on one host must not overlap, or each one's wall time measures the other; and
    # a GPU runs one trial at a time, whichever executor on the host was given it.
    with contextlib.ExitStack() as held:
        if spec.exclusive_cores > 0:
            held.enter_context(host_lock(home / "locks" / "cores.lock"))
            limits = dataclasses.replace(limits, cores=pinned_cores(spec.exclusive_cores))
        for device in sorted(devices.names):  # one order everywhere: no deadlock
            held.enter_context(host_lock(home / "locks" / f"{device.replace(':', '-')}.lock"))
        command = [arg.replace("{devices}", str(len(devices.ids))) for arg in command or spec.command]
        return run_command(command, run_dir, limits, log_path=log_path,
                           env={**spec.env, **devices.env(), **(env or {})}, allow_subprocess=spec.allow_subprocess)


class Executor:
    """Handles one delivered proposal at a time; campaigns' tasks and repos are cached."""

    def __init__(self, bus: Bus, name: str, devices: Devices = Devices()):
        self.bus = bus
        self.name = name
        self.devices = devices
        self.settings = bus.settings
        self.home = Path(self.settings.home)
        self.skipped = 0  # undecodable or unknown messages, acked and counted
        self.for_other_devices = 0  # trials left to another device class's executors
        self._started: dict[str, CampaignStarted] = {}
        self._campaigns: dict[str, tuple[CampaignStarted, Task, CampaignRepo]] = {}

    async def handle(self, msg) -> None:
        """Run or settle one delivery, then ack it. Raises only when the bus itself fails (no ack)."""
        try:
            proposal = decode_stored(msg.subject, msg.data)
            if not isinstance(proposal, (TrialProposed, TrialConfirmationRequested)):
                raise UnknownEvent(type(proposal).__name__)
        except (msgspec.DecodeError, UnknownEvent, ValueError) as exc:
            self.skipped += 1
            log.warning("skipping message on %s: %s (%d skipped so far)", msg.subject, exc, self.skipped)
            await msg.ack()
            return
        if not await self._runs_here(proposal):
            await msg.ack()  # the executors of its device class take it from their own queue
            return
        attempt = msg.metadata.num_delivered
        if isinstance(proposal, TrialConfirmationRequested):
            try:
                async with queue.heartbeat(msg, self.settings.ack_wait_s / 3):
                    await self._confirm(proposal, attempt)
            except Exception:  # the evaluator stops waiting at its timeout: the trial stays unconfirmed
                log.exception("reruns of %s in %s failed", proposal.trial_id, proposal.campaign_id)
            await msg.ack()
            return
        try:
            async with queue.heartbeat(msg, self.settings.ack_wait_s / 3):
                await self._handle(proposal, attempt)
        except Exception as exc:
            log.exception("trial %s of %s failed in the executor", proposal.trial_id, proposal.campaign_id)
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            await self._abandon(
                proposal,
                Evidence(
                    stage="executor",
                    message=f"{type(exc).__name__}: {exc}",
                    frame=f"{frame.filename}:{frame.lineno} in {frame.name}" if frame else None,
                ),
            )
        await msg.ack()

    async def _handle(self, proposal: TrialProposed, attempt: int) -> None:
        if proposal.rejection is not None:  # the agent found its own edit invalid: agents write no outcomes
            await self._outcome(TrialRejected, proposal, Evidence(stage="propose", message=proposal.rejection),
                                label="invalid_edit")
            return
        if await self._settled_without_running(proposal, attempt):
            return
        campaign_id, trial_id = proposal.campaign_id, proposal.trial_id
        # Published before any work: orchestration latency is measured from proposed to started.
        await self.bus.publish(
            TrialStarted(
                campaign_id=campaign_id,
                producer=self.name,
                causation_id=proposal.event_id,
                trial_id=trial_id,
                executor=self.name,
                attempt=attempt,
                devices=self.devices.names,
            )
        )
        started, task, repo = await self._campaign(campaign_id)
        try:
            problems = check_edit(proposal.diff, task.spec.paths_of(proposal.surface), task.spec.frozen)
        except ValueError as exc:  # a surface the task does not have
            problems = [EditProblem(str(exc))]
        if (too_big := oversize(proposal.hypothesis, proposal.diff)) is not None:  # from a client that let it by
            problems = [EditProblem(too_big)]
        if not problems:
            try:
                commit = await materialize(self.bus, repo, proposal, started)
            except InvalidEdit as exc:
                problems = [EditProblem(exc.reason, exc.path)]
        if problems:
            await self._reject(proposal, problems)
            return
        await self._run(proposal, attempt, task, repo, commit)

    async def _settled_without_running(self, proposal: TrialProposed, attempt: int) -> bool:
        """Redeliveries of a trial that already ran, trials of stopped campaigns, and exhausted retries."""
        campaign_id, trial_id = proposal.campaign_id, proposal.trial_id
        # An outcome, or a finish of any attempt (only earlier ones can exist yet).
        for verb, which in (("outcome", None), ("finished", "*")):
            done = subjects.trial(campaign_id, trial_id, verb, which)
            if await self.bus.last_event(done) is not None:
                log.info("trial %s of %s already has %s: redelivery skipped", trial_id, campaign_id, done)
                return True
        stopped = await self.bus.last_event(subjects.campaign(campaign_id, "stopped"))
        if isinstance(stopped, CampaignStopped):
            message = f"campaign_stopped: campaign {campaign_id} was stopped ({stopped.reason}) before this trial ran"
            await self._abandon(proposal, Evidence(stage="campaign_stopped", message=message))
            return True
        if attempt > self.settings.max_attempts:  # this delivery only records that the others failed
            message = (
                f"gave up after {attempt - 1} attempts: no executor finished this trial "
                f"(max_attempts {self.settings.max_attempts})"
            )
            evidence = Evidence(stage="queue", measured=attempt - 1, limit=self.settings.max_attempts, message=message)
            await self._abandon(proposal, evidence)
            return True
        return False

    async def _runs_here(self, proposal: TrialProposed) -> bool:
        """Is the trial for this executor's device class? Read from the spec its campaign recorded, so
        no task folder is needed to pass a trial on; a campaign without one is settled as usual."""
        started = await self._started_event(proposal.campaign_id)
        if started is None or device_class(started.spec.get("requires") or []) == self.devices.kind:
            return True
        self.for_other_devices += 1
        log.debug("trial %s of %s is for other devices (%d passed on so far)", proposal.trial_id,
                  proposal.campaign_id, self.for_other_devices)
        return False

    async def _started_event(self, campaign_id: str) -> CampaignStarted | None:
        if campaign_id not in self._started:
            started = await self.bus.last_event(subjects.campaign(campaign_id, "started"))
            if not isinstance(started, CampaignStarted):
                return None
            self._started[campaign_id] = started
        return self._started[campaign_id]

    async def _campaign(self, campaign_id: str) -> tuple[CampaignStarted, Task, CampaignRepo]:
        if campaign_id not in self._campaigns:
            started = await self._started_event(campaign_id)
            if started is None:
                raise RuntimeError(f"campaign {campaign_id} has no CampaignStarted event")
            task = campaign_task(started.task, started.spec)
            repo = await asyncio.to_thread(CampaignRepo.for_campaign, self.home, campaign_id)
            self._campaigns[campaign_id] = (started, task, repo)
        return self._campaigns[campaign_id]

    async def _run(self, proposal: TrialProposed, attempt: int, task: Task, repo: CampaignRepo, commit: str) -> None:
        try:
            measured = await self._measure(proposal.campaign_id, f"{proposal.trial_id}-{attempt}", task, repo,
                                           commit, diff=proposal.diff)
        except (HostFault, OSError) as exc:
            if (fault := host_fault_of(exc)) is None:
                raise
            await self._abandon(proposal, Evidence(stage="execute", message=fault))
            return
        await self.bus.publish(TrialFinished(
            campaign_id=proposal.campaign_id,
            producer=self.name,
            causation_id=proposal.event_id,
            trial_id=proposal.trial_id,
            attempt=attempt,
            **measured.fields(),
        ))

    async def _confirm(self, request: TrialConfirmationRequested, attempt: int) -> None:
        """Rerun the trees a confirmation names, in its order, on this host; reruns already reported are
        skipped. A confirmation belongs to a trial that already ran, so it runs even in a stopped campaign."""
        c = request.campaign_id
        started, task, repo = await self._campaign(c)
        for index, trial_id in enumerate(request.runs):
            rerun = replicate_id(request.trial_id, index)
            if await self.bus.last_event(subjects.replicate(c, rerun)) is not None:
                continue
            proposal = await self.bus.last_event(subjects.trial(c, trial_id, "proposed"))
            if not isinstance(proposal, TrialProposed):
                raise RuntimeError(f"confirmation of {request.trial_id} reruns {trial_id}, which was never proposed")
            commit = await materialize(self.bus, repo, proposal, started)
            measured = await self._measure(c, f"{rerun}-{attempt}", task, repo, commit)
            await self.bus.publish(ReplicateFinished(
                campaign_id=c, producer=self.name, causation_id=request.event_id,
                trial_id=trial_id, confirm_of=request.trial_id, index=index, attempt=attempt, **measured.fields(),
            ))

    async def _measure(self, campaign_id: str, name: str, task: Task, repo: CampaignRepo, commit: str, *,
                       diff: str = "") -> Measurement:
        """Run a commit's tree (an edit's preflight first) and store its log and artifact."""
        run_dir = self.home / "runs" / campaign_id / name
        log_path = run_dir.with_name(f"{run_dir.name}.log")
        limits = trial_limits(task.spec.budgets)
        shutil.rmtree(run_dir, ignore_errors=True)  # left by a crashed executor with the same attempt
        spent = DeviceSeconds(gpus=len(self.devices.ids))

        def run(*args, **kwargs) -> RunResult:
            return spent.add(self._run_command(task.spec, *args, **kwargs))

        try:
            await asyncio.to_thread(repo.export, commit, run_dir)
            await asyncio.to_thread(task.module().prepare, run_dir)
            failure = None
            if diff.strip():
                failure = await asyncio.to_thread(preflight.check, task, run_dir, diff, log_path, run)
            if failure is None:
                result = await asyncio.to_thread(run, run_dir, limits, log_path)
            else:
                result, limits = failure.result, failure.limits
            log_ref = await self.bus.put_object(f"logs/{campaign_id}/{name}.log", log_path.read_bytes())
            packed = None if failure is not None else await asyncio.to_thread(pack_artifact, run_dir, task.spec)
            artifact_ref = None
            if packed is not None:
                artifact_ref = await self.bus.put_object(f"artifacts/{campaign_id}/{name}.tar.gz", packed)
            return Measurement(
                executor=self.name,
                commit=commit,
                exit_code=result.exit_code,
                signal=result.signal,
                timed_out=result.timed_out,
                wall_s=result.wall_s,
                cpu_s=result.cpu_s,
                peak_rss_mb=result.peak_rss_mb,
                limits=limits_of(limits),
                killed_by=result.killed_by,
                disk_mb=result.disk_mb,
                isolation=list(result.isolation),
                log_tail=log_tail(result.log, self.settings.log_tail_chars),
                log=log_ref,
                artifact=artifact_ref,
                stage="" if failure is None else PREFLIGHT_STAGE,
                measured={} if failure is None else failure.measured,
                device_s=spent.by_kind(),
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, run_dir, ignore_errors=True)
            log_path.unlink(missing_ok=True)

    def _run_command(self, spec: TaskSpec, run_dir: Path, limits: Limits, log_path: Path, *,
                     command: list[str] | None = None, env: dict[str, str] | None = None) -> RunResult:
        result = run_recipe(spec, run_dir, limits, log_path, home=self.home, devices=self.devices, command=command,
                            env=env)
        if result.host_fault is not None:
            raise HostFault(result.host_fault)
        return result

    async def _reject(self, proposal: TrialProposed, problems: list[EditProblem]) -> None:
        message = "; ".join(str(problem) for problem in problems)
        await self._outcome(TrialRejected, proposal, Evidence(stage="apply", message=message), label="invalid_edit")

    async def _abandon(self, proposal: TrialProposed, evidence: Evidence) -> None:
        await self._outcome(TrialAbandoned, proposal, evidence, label="harness_abort")

    async def _outcome(self, kind, proposal: TrialProposed, evidence: Evidence, *, label: str) -> None:
        """The trial's one outcome; if another writer was first, theirs stands."""
        outcome = kind(
            campaign_id=proposal.campaign_id,
            producer=self.name,
            causation_id=proposal.event_id,
            trial_id=proposal.trial_id,
            label=label,
            evidence=evidence,
        )
        if await self.bus.publish(outcome):
            log.info("trial %s of %s: %s (%s)", proposal.trial_id, proposal.campaign_id, label, evidence.message)
        else:
            log.info("trial %s of %s already had an outcome", proposal.trial_id, proposal.campaign_id)


async def run_executor(
    bus: Bus, *, name: str, stop: anyio.Event | None = None, devices: Devices = Devices()
) -> None:
    """Run trials from its device class's queue until `stop` is set (a running trial finishes first)."""
    executor = Executor(bus, name, devices)
    sub = await bus.durable(queue_name(devices.kind), [subjects.PROPOSALS, subjects.CONFIRMATIONS])
    log.info("executor %s waiting for trials on %s", name, ", ".join(devices.names) or CPU)
    await queue.work(sub, executor.handle, stop=stop)


def default_name() -> str:
    return f"executor-{socket.gethostname()}-{os.getpid()}"


async def _serve(name: str, devices: Devices) -> None:
    stop = anyio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with await Bus.connect(role="executor", name=name) as bus:
        await run_executor(bus, name=name, stop=stop, devices=devices)


def cli_arguments(parser) -> None:
    parser.add_argument("--name", help="executor name (default: executor-<host>-<pid>)")
    parser.add_argument(
        "--devices", default="cpu",
        help="cpu (default), auto (CUDA_VISIBLE_DEVICES or nvidia-smi), or GPUs like cuda:0,cuda:1: "
        "the executor takes only trials whose task's requirements these meet",
    )


def cli(args) -> int:
    setup_logging()
    devices = parse_devices(getattr(args, "devices", None) or CPU)
    asyncio.run(_serve(args.name or default_name(), devices))
    return 0
