"""TPE over the task's declared knobs: optuna's sampler, rebuilt from the lineage on every proposal.

The study holds the campaign's trials that carry knob values (this agent's, other specialists', the
baseline's), so a restarted agent, or a second one, knows everything the first knew. Given the same
lineage and seed it proposes the same point.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings

import anyio
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from agents.arms import draw_seed, sees_lineage
from agents.base import Context, Proposal, Specialist
from bus.edits import path_in
from agents.edits import diff_trees, knob_values, set_knob
from evaluators.spec import Knob
from projections import reads, views

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# The most recent trials the study is rebuilt from, so a proposal costs the same at any campaign size.
MAX_HISTORY = 1000
# Asks before giving up on finding a point that differs from the parent (narrow int ranges repeat).
MAX_ASKS = 20
PASSED_LABELS = ("keep", "discard", "within_noise")



def surface_knobs(context: Context) -> list[Knob]:
    """The task's knobs in files this specialist's surface may edit (and no edit may touch frozen ones)."""
    spec = context.task.spec
    paths = spec.paths_of(context.surface)
    return [k for k in spec.knobs if path_in(k.path, paths) and not path_in(k.path, spec.frozen)]


def distribution(knob: Knob) -> BaseDistribution:
    if knob.kind == "int":
        return IntDistribution(int(knob.low), int(knob.high), log=knob.log)
    return FloatDistribution(knob.low, knob.high, log=knob.log)


def _point(params: dict, knobs: list[Knob]) -> dict | None:
    """The knob values as the study holds them (clipped into bounds), or None when some are missing."""
    point = {}
    for knob in knobs:
        value = params.get(knob.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None  # a free-form edit, or another surface's knobs only
        value = min(max(value, knob.low), knob.high)
        point[knob.name] = int(round(value)) if knob.kind == "int" else float(value)
    return point


def _state(label: str | None, score: float | None) -> tuple[TrialState, float | None]:
    if label is None:
        return TrialState.RUNNING, None  # in flight: the constant liar steers the next ask away from it
    if label in PASSED_LABELS and score is not None:
        return TrialState.COMPLETE, score
    return TrialState.FAIL, None  # gate misses, crashes, overruns, invalid edits


def history(context: Context, knobs: list[Knob], baseline: dict) -> tuple[list[FrozenTrial], list[str]]:
    """The study's trials from the lineage and the ids of the rows they came from.

    baseline: the knob values of the bundle, for a root trial that was proposed without params.
    """
    distributions = {k.name: distribution(k) for k in knobs}
    trials, ids = [], []
    for trial in reads.knob_history(context.lineage, context.campaign_id, MAX_HISTORY):
        params = json.loads(trial.params or "{}")
        point = _point(params or (baseline if trial.parent_id is None else {}), knobs)
        if point is None:
            continue
        state, value = _state(trial.label, trial.score)
        trials.append(optuna.trial.create_trial(state=state, value=value, params=point, distributions=distributions))
        ids.append(trial.trial_id)
    return trials, ids


def incumbent_only(context: Context, knobs: list[Knob], parent: dict) -> list[FrozenTrial]:
    """The study of an agent that sees only the incumbent: its point and score, if one is kept."""
    if context.incumbent is None:
        return []
    distributions = {k.name: distribution(k) for k in knobs}
    point = _point(parent, knobs)
    return [
        optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=context.incumbent.score, params=point, distributions=distributions
        )
    ]


def sampler_seed(seed: int, n_trials: int) -> int:
    """A seed per study size: the same lineage gives the same point, a grown one a fresh point."""
    digest = hashlib.sha256(f"{seed}:{n_trials}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def ask(trials: list[FrozenTrial], knobs: list[Knob], direction: str, seed: int, parent: dict) -> dict | None:
    """A new point that moves at least one knob away from the parent's values, or None."""
    sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, len(trials)))
    study = optuna.create_study(direction="minimize" if direction == "min" else "maximize", sampler=sampler)
    study.add_trials(trials)
    distributions = {k.name: distribution(k) for k in knobs}
    for _ in range(MAX_ASKS):
        point = study.ask(distributions).params
        if any(point[k.name] != parent[k.name] for k in knobs):
            return point
    return None


class TPESpecialist(Specialist):
    policy = "tpe"

    async def propose(self, context: Context) -> Proposal | None:
        declared = surface_knobs(context)
        parent = knob_values(context.files, declared)
        knobs = [k for k in declared if k.name in parent]
        if not knobs:
            raise ValueError(f"surface {context.surface!r} of {context.task.name} has no knobs to tune")
        if sees_lineage(context):
            root = views.root_trial(context.lineage, context.campaign_id)
            files = await context.tree(root.trial_id) if root else await context.trees.baseline()
            trials, shown = history(context, knobs, knob_values(files, knobs))
            seed = self.seed
        else:  # the no-lineage arm: one known point is a random search, drawn afresh each time
            trials, shown = incumbent_only(context, knobs, parent), [context.parent_id]
            seed = draw_seed(context, self.seed)
        direction = context.campaign.direction
        # optuna is CPU work: off the event loop, which keeps folding the log meanwhile.
        point = await anyio.to_thread.run_sync(ask, trials, knobs, direction, seed, parent)
        if point is None:
            return None
        files = dict(context.files)
        moves = []
        for knob in knobs:
            if point[knob.name] != parent[knob.name]:
                files[knob.path] = set_knob(files[knob.path], knob.name, point[knob.name])
                moves.append(f"{knob.name} {parent[knob.name]} -> {point[knob.name]}")
        return Proposal(
            hypothesis=f"TPE over {len(trials)} trials of this campaign suggests moving {', '.join(moves)}.",
            diff=diff_trees(context.files, files),
            params=knob_values(files, context.task.spec.knobs),
            shown_ids=shown,
        )
