"""Labels: from what the executor saw and what the evaluation measured to one outcome with its evidence.

Pure functions, so that every rule is tested on its own and a replay gives the same labels. The
evidence is what an agent needs to act: the failing gate with its measured value and limit, or the
deepest frame of the traceback and the exception line.
"""

from __future__ import annotations

import math
import re
import signal
import statistics
from dataclasses import dataclass, field, replace

import msgspec

from bus.events import PREFLIGHT_STAGE, Evidence, GateVerdict, _RunFinished
from evaluators.sandbox import OUTPUT_MB
from evaluators.spec import TaskSpec
from projections.views import Incumbent

_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>.+))?$')
_LIBRARY = re.compile(r"/(?:site|dist)-packages/|/lib/python\d+\.\d+/")
_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|can't allocate memory|std::bad_alloc|out of memory")
_FILE_SIZE = re.compile(r"File too large")
# torchrun prefixes a worker's lines once it has a process group, and reports the worker's failure in a
# traceback of its own after the worker's: the recipe's traceback is the last one not the launcher's.
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:[ ]?")
_LAUNCHER_FAILURE = "ChildFailedError"
# A SIGKILL, SIGSEGV or SIGABRT with the peak resident size this close to the limit is the limit's doing.
NEAR_LIMIT = 0.9
_MEMORY_SIGNALS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT}
PASSED = "passed"  # judge()'s label for a run that passed every gate: its outcome comes from comparing
# A candidate that beats the incumbent by more than the noise but by at most this many noise margins
# is run again, interleaved with the incumbent, CONFIRM_PAIRS times each before it may be kept.
CONFIRM_WITHIN = 3.0
CONFIRM_PAIRS = 3


@dataclass(frozen=True)
class Evaluation:
    """What scoring the artifact gave: metrics, or the stage where it failed and why."""

    metrics: dict[str, float] = field(default_factory=dict)
    failed: str | None = None  # "artifact", "evaluate" or "eval_budget"
    error: str = ""  # a traceback or a one-line reason
    root: str | None = None  # the folder the model code ran from: its frames are the ones to show
    signal: int | None = None
    wall_s: float = 0.0


@dataclass(frozen=True)
class Verdict:
    label: str
    score: float | None = None
    gates: list[GateVerdict] = field(default_factory=list)
    evidence: Evidence = Evidence()
    # Set by a confirmation: the incumbent's score measured beside the candidate's reruns.
    incumbent_score: float | None = None


@dataclass(frozen=True)
class Traceback:
    frame: str | None  # "train.py:42 in main"
    message: str  # "ZeroDivisionError: division by zero", or the last line of the log


def parse_traceback(text: str, root: str | None = None) -> Traceback:
    """The deepest frame in the recipe's own code (else the deepest at all) and the exception line.

    The recipe's code is what lies under `root` (the artifact folder, for predict) or, without a root,
    every frame outside the Python installation; its paths are shown relative to root, or to the
    folder its frames share. Reads the last traceback in the text: for chained exceptions, the one
    that ended the run; under torchrun, the worker's, not the launcher's report of it.
    """
    lines = [_RANK_PREFIX.sub("", line) for line in text.splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    blocks = [_read_block(lines[start:]) for start in starts] or [_read_block(lines)]
    frames, message = next((b for b in reversed(blocks) if _LAUNCHER_FAILURE not in b[1]), blocks[-1])
    if not message:
        message = next((line.strip() for line in reversed(lines) if line.strip()), "")
    if not frames:
        return Traceback(None, message)
    if root:
        root = root.rstrip("/")
        own = [f for f in frames if f["path"].startswith(root + "/")]
    else:
        # Not the installation's, and not code compiled from a string (a dataclass's __init__: "<string>").
        own = [f for f in frames if not _LIBRARY.search(f["path"]) and not f["path"].startswith("<")]
    deepest = (own or frames)[-1]
    base = root if root and own else _common_folder([f["path"] for f in own])
    where = f"{_short_path(deepest['path'], base)}:{deepest['line']}"
    return Traceback(f"{where} in {deepest['func']}" if deepest["func"] else where, message)


def _read_block(lines: list[str]) -> tuple[list[re.Match], str]:
    """The frames of the traceback the lines start with, and its exception line."""
    frames, message = [], ""
    for line in lines:
        match = _FRAME.match(line)
        if match:
            frames.append(match)
        elif frames and line and not line[0].isspace():
            message = line.strip()
            break
    return frames, message


def _short_path(path: str, base: str) -> str:
    """Relative to base when under it; a library file from its package; else as it is."""
    if base and path.startswith(base + "/"):
        return path[len(base) + 1:]
    library = _LIBRARY.search(path)
    return path[library.end():] if library else path


def _common_folder(paths: list[str]) -> str:
    folders = [_folder(p) for p in paths]
    common = folders[0] if folders else ""
    while common and not all(f == common or f.startswith(common + "/") for f in folders):
        common = _folder(common)
    return common


def _folder(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def training_failed(finished: _RunFinished) -> bool:
    return finished.timed_out or bool(finished.exit_code) or finished.signal is not None


def scorable(finished: _RunFinished) -> bool:
    """Did the full run end cleanly, leaving an artifact worth evaluating?"""
    return finished.stage != PREFLIGHT_STAGE and not training_failed(finished)


def label(
    finished: _RunFinished,
    spec: TaskSpec,
    evaluation: Evaluation | None,
    incumbent: Incumbent | None,
    noise: float,
) -> Verdict:
    """The outcome of one trial. `evaluation` is None only when the run is not scorable."""
    verdict = judge(finished, spec, evaluation)
    if verdict.label != PASSED:
        return verdict
    outcome, evidence = compare(spec, verdict.score, incumbent, noise)
    return replace(verdict, label=outcome, evidence=evidence)


def judge(finished: _RunFinished, spec: TaskSpec, evaluation: Evaluation | None) -> Verdict:
    """One run on its own: its failure label with the evidence, or PASSED with its score and gates."""
    limits = {"train_s": spec.budgets.train_s, "memory_mb": spec.budgets.memory_mb,
              "file_mb": spec.budgets.file_mb, **finished.limits}
    if finished.stage == PREFLIGHT_STAGE:
        return _preflight(finished, spec, limits)
    train_gate = GateVerdict(gate="train_s", passed=not finished.timed_out, measured=finished.wall_s,
                             limit=limits["train_s"])
    if finished.timed_out:
        return Verdict("train_budget_overrun", gates=[train_gate], evidence=Evidence(
            stage="train", gate="train_s", measured=finished.wall_s, limit=limits["train_s"],
            message=f"training ran {finished.wall_s:.1f}s, over its {limits['train_s']:g}s budget"))
    if finished.killed_by:  # an executor watchdog other than the wall clock ended the run (disk_mb)
        limit = limits.get(finished.killed_by)
        return Verdict("crash", gates=[train_gate], evidence=Evidence(
            stage="train", gate=finished.killed_by, measured=finished.disk_mb, limit=limit,
            message=f"the run dir held {finished.disk_mb:.0f} MB, over its {finished.killed_by} budget of {limit:g} MB"))
    if training_failed(finished):
        return Verdict("crash", gates=[train_gate], evidence=crash_evidence(
            "train", finished.log_tail, finished.signal, finished.exit_code, finished.peak_rss_mb, limits))
    if evaluation is None:
        raise ValueError(f"trial {finished.trial_id} trained cleanly but has no evaluation")
    return _evaluated(finished, spec, evaluation, train_gate)


def _preflight(finished: _RunFinished, spec: TaskSpec, limits: dict[str, float]) -> Verdict:
    """A preflight stopped the trial: its syntax check or smoke run broke, or the size it projects
    from the smoke run's artifact is over a cap."""
    if training_failed(finished):
        return Verdict("preflight_crash", evidence=crash_evidence(
            PREFLIGHT_STAGE, finished.log_tail, finished.signal, finished.exit_code, finished.peak_rss_mb, limits))
    gates, failing = _gates(spec, finished.measured, measured_only=True)
    if failing is None:
        raise ValueError(f"the preflight stopped trial {finished.trial_id}, but its measurements "
                         f"{finished.measured} pass every gate")
    gate, value = failing
    return Verdict(gate.label, gates=gates, evidence=Evidence(
        stage=PREFLIGHT_STAGE, gate=gate.metric, measured=value, limit=gate.limit,
        message=f"{gate.metric} projected from a smoke run is {value:.6g}, required {gate.op} {gate.limit:g}"))


def _gates(spec: TaskSpec, measured: dict[str, float], *, measured_only: bool = False):
    """Every gate's verdict (only those on a measured metric, with measured_only) and the first failing
    gate with its value, or None."""
    gates, failing = [], None
    for gate in spec.gates:
        value = measured.get(gate.metric)
        if value is None and measured_only:
            continue
        passed = value is not None and gate.passes(value)
        detail = "" if value is not None else f"{gate.metric} was not measured"
        gates.append(GateVerdict(gate=gate.metric, passed=passed, measured=value, limit=gate.limit, detail=detail))
        if not passed and failing is None:
            failing = (gate, value)
    return gates, failing


def _evaluated(finished, spec, evaluation, train_gate) -> Verdict:
    eval_limit = spec.budgets.eval_s
    eval_gate = GateVerdict(gate="eval_s", passed=evaluation.failed != "eval_budget", measured=evaluation.wall_s,
                            limit=eval_limit)
    gates = [train_gate, eval_gate]
    if evaluation.failed == "artifact":
        return Verdict("crash", gates=[train_gate], evidence=Evidence(stage="artifact", message=evaluation.error))
    if evaluation.failed == "eval_budget":
        return Verdict("eval_budget_overrun", gates=gates, evidence=Evidence(
            stage="evaluate", gate="eval_s", measured=evaluation.wall_s, limit=eval_limit,
            message=f"evaluation ran past its {eval_limit:g}s budget"))
    if evaluation.failed is not None:
        sandbox_limits = {"memory_mb": spec.budgets.memory_mb, "file_mb": OUTPUT_MB}
        return Verdict("crash", gates=gates, evidence=crash_evidence(
            "evaluate", evaluation.error, evaluation.signal, None, 0.0, sandbox_limits, root=evaluation.root))

    measured = {**evaluation.metrics, "wall_s": finished.wall_s}
    if spec.score not in measured:
        raise ValueError(f"task {spec.name} scores {spec.score!r} but its metrics give {sorted(evaluation.metrics)}")
    score = measured[spec.score]
    if not math.isfinite(score):
        return Verdict("crash", gates=gates, evidence=Evidence(stage="evaluate", measured=score,
                                                               message=f"score {spec.score} is {score}"))
    verdicts, failing = _gates(spec, measured)
    gates += verdicts
    if failing is not None:
        gate, value = failing
        shown = "missing" if value is None else f"{value:.6g}"
        return Verdict(gate.label, score, gates, Evidence(
            stage="gate", gate=gate.metric, measured=value, limit=gate.limit,
            message=f"{gate.metric} {shown}, required {gate.op} {gate.limit:g}"))
    return Verdict(PASSED, score, gates)


def _gain(spec: TaskSpec, score: float, than: float) -> float:
    """How much better score is than `than`: positive when better, in either direction."""
    return than - score if spec.direction == "min" else score - than


def compare(spec: TaskSpec, score: float, incumbent: Incumbent | None, noise: float) -> tuple[str, Evidence]:
    """keep only beyond the noise: better than the incumbent by more than noise * |incumbent|."""
    if incumbent is None:
        return "keep", Evidence(stage="compare", measured=score, message="first scored trial: the incumbent")
    summary = f"{spec.score} {score:.6g} vs incumbent {incumbent.trial_id} {incumbent.score:.6g}"
    return _beyond_noise(spec, score, incumbent.score, noise, "compare", summary)


def _beyond_noise(spec: TaskSpec, score: float, incumbent_score: float, noise: float, stage: str,
                  summary: str) -> tuple[str, Evidence]:
    margin = noise * abs(incumbent_score)
    gain = _gain(spec, score, incumbent_score)
    threshold = incumbent_score + (-margin if spec.direction == "min" else margin)
    needed = f"{'<' if spec.direction == 'min' else '>'} {threshold:.6g}"
    if gain > margin:
        label = "keep"
    elif gain > 0:
        label = "within_noise"
    else:
        label = "discard"
    return label, Evidence(stage=stage, measured=score, limit=threshold,
                           message=f"{summary} (keep needs {needed}, noise {noise:.3g})")


def needs_confirmation(spec: TaskSpec, score: float, incumbent: Incumbent | None, noise: float) -> bool:
    """A win beyond the noise but within CONFIRM_WITHIN noise margins may be a lucky draw: rerun it."""
    if incumbent is None or noise <= 0:
        return False
    margin = noise * abs(incumbent.score)
    return margin < _gain(spec, score, incumbent.score) <= CONFIRM_WITHIN * margin


def confirmation_runs(candidate_id: str, incumbent_id: str, pairs: int = CONFIRM_PAIRS) -> list[str]:
    """Candidate and incumbent alternate, so a slow drift of the machine's speed hits both alike."""
    return [candidate_id, incumbent_id] * pairs


def confirm(spec: TaskSpec, first: Verdict, runs: list[tuple[str, Verdict]], candidate_id: str,
            incumbent_id: str, noise: float) -> Verdict:
    """The candidate's outcome from its reruns beside the incumbent's (judge() verdicts, in run order):
    keep only if the median of its reruns beats the median of the incumbent's by more than the noise.

    The first run, which looked good enough to be rerun, is left out: choosing it made it optimistic.
    Every rerun must pass its gates; the score recorded is the median of the candidate's reruns.
    """
    for index, (trial_id, run) in enumerate(runs):
        if run.label != PASSED:
            who = "the candidate" if trial_id == candidate_id else f"incumbent {trial_id}"
            return unconfirmed(first, f"rerun {index} of {who} gave {run.label}: {run.evidence.message}",
                               run.evidence)
    mine = [run.score for trial_id, run in runs if trial_id == candidate_id]
    theirs = [run.score for trial_id, run in runs if trial_id == incumbent_id]
    if not mine or not theirs:
        raise ValueError(f"confirmation of {candidate_id} needs reruns of it and of {incumbent_id}")
    score, incumbent_score = statistics.median(mine), statistics.median(theirs)
    summary = (f"confirmed over {len(mine)}+{len(theirs)} interleaved reruns: {spec.score} median {score:.6g}"
               f" {_shown(mine)} vs incumbent {incumbent_id} median {incumbent_score:.6g} {_shown(theirs)};"
               f" first run {first.score:.6g}")
    outcome, evidence = _beyond_noise(spec, score, incumbent_score, noise, "confirm", summary)
    return replace(first, label=outcome, score=score, evidence=evidence, incumbent_score=incumbent_score)


def unconfirmed(first: Verdict, reason: str, evidence: Evidence = Evidence()) -> Verdict:
    """A candidate whose win could not be confirmed is not kept: within_noise, with the reason."""
    return replace(first, label="within_noise", evidence=msgspec.structs.replace(
        evidence, stage="confirm", message=f"not confirmed: {reason}"))


def _shown(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def crash_evidence(stage: str, text: str, sig: int | None, exit_code: int | None, peak_rss_mb: float,
                   limits: dict[str, float], root: str | None = None) -> Evidence:
    """Where a run broke; a crash caused by the memory or file-size limit names that limit."""
    trace = parse_traceback(text, root)
    message = trace.message
    if sig is not None:
        message = f"killed by {_signal_name(sig)}" + (f": {message}" if message else "")
    elif not message:
        message = f"exit code {exit_code}"
    if sig == signal.SIGXFSZ or _FILE_SIZE.search(text):
        return Evidence(stage=stage, gate="file_mb", limit=limits["file_mb"], frame=trace.frame, message=message)
    near_limit = peak_rss_mb >= NEAR_LIMIT * limits["memory_mb"]
    if _MEMORY.search(text) or (sig in _MEMORY_SIGNALS and near_limit):
        return Evidence(stage=stage, gate="memory_mb", measured=peak_rss_mb or None, limit=limits["memory_mb"],
                        frame=trace.frame, message=message)
    return Evidence(stage=stage, frame=trace.frame, message=message)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
