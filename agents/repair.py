"""The repair specialist: turns a failure's evidence into the fix it points to.

- size_blocked: shrink a knob that grows the artifact, by the measured/limit ratio (or apply a technique
  the task declares as its fix, such as quantizing);
- train_budget_overrun: cut a knob that costs training time (epochs, width) the same way;
- eval_budget_overrun: shrink the model, as for size (evaluation time grows with the model);
- disqualified (a gate missed): revert the failed trial's largest knob move halfway toward its parent's
  value, or, when it moved no knob, give it more capacity (more epochs, more width).

Knobs' `effects` in task.toml say which knob moves what. A fix is the failed trial itself with a
knob changed, or its parent with the failed edit adjusted. Only failures of trials proposed on the
current incumbent are repaired (a fix on an older parent would have to beat a better incumbent
without its gains), each once; a repair that fails again is repaired again, up to a depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.arms import sees_lineage
from agents.base import Context, Proposal, Specialist
from agents.catalog import candidates, surface_transforms
from agents.edits import diff_trees, knob_values, set_knob
from agents.tpe import surface_knobs
from evaluators.spec import Knob
from projections import reads
from projections.reads import Failure

# label -> (the quantity to bring down, or capacity to bring back up)
REPAIRABLE = {
    "size_blocked": "size",
    "train_budget_overrun": "time",
    "eval_budget_overrun": "size",
    "disqualified": "capacity",
}
MARGIN = 0.8  # aim below the limit, not at it
DEFAULT_CUT = 0.5  # when the evidence has no measure well over the limit (a run killed at the limit)
CAPACITY_FACTOR = 1.5
MAX_FAILURES = 50
MAX_DEPTH = 3  # a repair of a repair of a repair is not repaired again


@dataclass(frozen=True)
class Fix:
    parent_id: str
    parent_files: dict[str, str]
    files: dict[str, str]
    action: str


def scaled(knob: Knob, value: float, factor: float) -> int | float:
    """value * factor inside the knob's bounds; an int knob moves at least one step."""
    target = min(max(value * factor, knob.low), knob.high)
    if knob.kind != "int":
        return float(target)
    rounded = int(round(target))
    if rounded == value and target != value:
        rounded += 1 if target > value else -1
    return min(max(rounded, int(knob.low)), int(knob.high))


def distance(knob: Knob, a: float, b: float) -> float:
    """How far a knob moved, as a fraction of its range (in log space for log knobs)."""
    if knob.log and a > 0 and b > 0:
        return abs(math.log(a / b)) / math.log(knob.high / knob.low)
    return abs(a - b) / (knob.high - knob.low)


def halfway(knob: Knob, failed: float, parent: float) -> int | float:
    """Half of the way back from the failed value to the parent's (the parent's when there is no half)."""
    middle = math.sqrt(failed * parent) if knob.log and failed > 0 and parent > 0 else (failed + parent) / 2
    if knob.kind == "int":
        middle = int(round(middle))
        return parent if middle == failed else middle
    return float(middle)


def evidence(failure: Failure) -> str:
    """`label: gate measured vs limit`, as far as the outcome says."""
    gate, measured, limit = failure.evidence_gate, failure.evidence_measured, failure.evidence_limit
    if gate and measured is not None and limit is not None:
        return f"{failure.label}: {gate} {measured:g} vs limit {limit:g}"
    return failure.label


def cut_factor(measured: float | None, limit: float | None) -> float:
    if measured and limit and 0 < limit < measured * 0.95:
        return limit / measured * MARGIN
    return DEFAULT_CUT


class RepairSpecialist(Specialist):
    policy = "repair"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Failures with no fix on this surface: a pure function of the log, kept only to save work.
        self._unfixable: set[str] = set()

    async def propose(self, context: Context) -> Proposal | None:
        if not sees_lineage(context):
            return None
        for failure in self._failures(context):
            fix = await self._fix(context, failure)
            if fix is None:
                self._unfixable.add(failure.trial_id)
                continue
            return Proposal(
                hypothesis=f"Repair {failure.trial_id} ({evidence(failure)}): {fix.action}.",
                diff=diff_trees(fix.parent_files, fix.files),
                parent_id=fix.parent_id,
                params=knob_values(fix.files, context.task.spec.knobs),
                shown_ids=[failure.trial_id, failure.parent_id],
            )
        return None

    def _failures(self, context: Context) -> list[Failure]:
        """Repairable failures of trials on the current parent, newest first, not yet repaired."""
        c = context.campaign_id
        repaired = {failed for failed, _ in reads.first_shown(context.lineage, c, self.policy)}
        found = reads.failures_on(context.lineage, c, context.parent_id, tuple(REPAIRABLE), MAX_FAILURES)
        return [
            failure for failure in found
            if failure.trial_id not in repaired and failure.trial_id not in self._unfixable
            and self._depth(context, failure) < MAX_DEPTH
        ]

    def _depth(self, context: Context, failure: Failure) -> int:
        """How many repairs deep a failed trial is (0: not a repair)."""
        depth = 0
        trial: Failure | reads.Origin | None = failure
        while trial is not None and trial.policy == self.policy and depth < MAX_DEPTH:
            depth += 1
            trial = reads.origin(context.lineage, context.campaign_id, trial.shown_ids)
        return depth

    async def _fix(self, context: Context, failure: Failure) -> Fix | None:
        knobs = surface_knobs(context)
        failed_id, parent_id = failure.trial_id, failure.parent_id
        failed = await context.tree(failed_id)
        effect = REPAIRABLE[failure.label]
        technique = self._technique(context, failure.label, failed)
        if technique is not None:
            return Fix(failed_id, failed, technique.files, f"apply {technique.key}, a declared fix")
        if effect != "capacity":
            factor = cut_factor(failure.evidence_measured, failure.evidence_limit)
            return self._scale(knobs, failed_id, failed, effect, factor, f"to bring {effect} under the limit")
        parent = await context.tree(parent_id)
        return self._revert(knobs, parent_id, parent, failed) or self._scale(
            knobs, failed_id, failed, "capacity", CAPACITY_FACTOR, "to restore capacity (it moved no knob)"
        )

    @staticmethod
    def _technique(context: Context, label: str, failed: dict[str, str]):
        declared = [t for t in surface_transforms(context.task.spec, context.surface) if label in t.fixes]
        options = candidates(failed, declared, context.task.spec.knobs)
        return options[0] if options else None

    @staticmethod
    def _scale(
        knobs: list[Knob], failed_id: str, failed: dict[str, str], effect: str, factor: float, why: str
    ) -> Fix | None:
        """Scale `effect` by factor through the first knob with that effect that can still move that way."""
        values = knob_values(failed, knobs)
        for knob in knobs:
            sign = knob.effects.get(effect)
            if not sign or knob.name not in values:
                continue
            old = values[knob.name]
            new = scaled(knob, old, factor if sign > 0 else 1 / factor)
            if new != old:
                files = {**failed, knob.path: set_knob(failed[knob.path], knob.name, new)}
                return Fix(failed_id, failed, files, f"{knob.name} {old} -> {new} {why}")
        return None

    @staticmethod
    def _revert(knobs: list[Knob], parent_id: str, parent: dict[str, str], failed: dict[str, str]) -> Fix | None:
        """The failed edit with its largest knob move taken halfway back, on the failed trial's parent."""
        before, after = knob_values(parent, knobs), knob_values(failed, knobs)
        moved = [k for k in knobs if k.name in before and k.name in after and before[k.name] != after[k.name]]
        if not moved:
            return None
        knob = max(moved, key=lambda k: distance(k, after[k.name], before[k.name]))
        new = halfway(knob, after[knob.name], before[knob.name])
        files = {**failed, knob.path: set_knob(failed[knob.path], knob.name, new)}
        action = f"its largest move taken back halfway, {knob.name} {after[knob.name]} -> {new}"
        action += f" (parent {before[knob.name]})"
        return Fix(parent_id, parent, files, action)
