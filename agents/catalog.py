"""The catalog specialist: applies the known techniques a task declares (`[[transforms]]` in task.toml).

A technique is a named, parameterized edit of one file; each combination of its parameter values is
one variant, keyed like `adam(lr=0.003)` in the trial's hypothesis. Which variant to try comes from
the lineage alone, so a restart loses nothing: never one already tried on the incumbent (same parent,
same diff; a harness_abort does not count), then variants never tried anywhere, techniques never
tried before others, then those kept elsewhere, those that passed the gates, and those that failed
last. In the no-lineage arm it sees only the incumbent, so it draws among the applicable variants.
"""

from __future__ import annotations

import ast
import itertools
import math
import operator
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agents.arms import draw_seed, sees_lineage
from agents.base import Context, Proposal, Specialist
from bus.edits import ALL_SURFACES
from agents.edits import EditError, diff_trees, knob_values, read_knob, set_knob
from evaluators.spec import PLACEHOLDER, Knob, TaskSpec, Transform
from projections import reads

HYPOTHESIS = "technique {key}: {description}"
KEY = re.compile(r"^technique (\S+): ")
# The most recent catalog trials whose outcomes rank the variants: the same cost at any campaign size.
MAX_HISTORY = 1000
MAX_CHILDREN = 5000  # the incumbent's children compared by diff (a long reign has many)
PASSED = ("discard", "within_noise")

_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_FUNCTIONS = {"min": min, "max": max, "round": round, "int": int, "float": float, "abs": abs}


class TransformError(EditError):
    """A transform that does not apply to a tree: a search text missing or repeated, a bad constant."""


def evaluate(expression: str, lookup: Callable[[str], int | float]) -> int | float:
    """An arithmetic expression over numbers and named constants (looked up), nothing else."""

    def value(node: ast.AST) -> int | float:
        match node:
            case ast.Constant(value=v) if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v
            case ast.Name(id=name):
                return lookup(name)
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _OPERATORS:
                return _OPERATORS[type(op)](value(left), value(right))
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                return -value(operand)
            case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS:
                return _FUNCTIONS[name](*(value(a) for a in args))
        raise TransformError(f"expression {expression!r}: {ast.unparse(node)!r} is not allowed")

    try:
        result = value(ast.parse(expression, mode="eval").body)
    except SyntaxError:
        raise TransformError(f"expression {expression!r} is not valid Python") from None
    except (ArithmeticError, TypeError) as exc:
        raise TransformError(f"expression {expression!r}: {exc}") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise TransformError(f"expression {expression!r} is not finite")
    return result


def variants(transform: Transform) -> list[dict]:
    """Every combination of the parameter values, the first-listed values first."""
    names = list(transform.params)
    return [dict(zip(names, combo)) for combo in itertools.product(*(transform.params[n] for n in names))]


def variant_key(transform: Transform, values: Mapping) -> str:
    inside = ",".join(f"{name}={value}" for name, value in values.items())
    return f"{transform.name}({inside})"


def substitute(text: str, values: Mapping) -> str:
    """Fill the {param} placeholders; other braces (code) stay as they are."""
    return PLACEHOLDER.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], text)


def _constant(text: str, name: str, value: int | float, knob: Knob | None) -> str:
    if knob is not None:  # a declared knob stays inside the search space
        value = min(max(value, knob.low), knob.high)
        value = int(round(value)) if knob.kind == "int" else float(value)
    elif isinstance(read_knob(text, name), int) and float(value).is_integer():
        value = int(value)
    return set_knob(text, name, value)


def apply_transform(
    files: Mapping[str, str], transform: Transform, values: Mapping, knobs: list[Knob]
) -> dict[str, str]:
    """The tree with one variant applied; TransformError when it does not apply."""
    text = files.get(transform.path)
    if text is None:
        raise TransformError(f"{transform.name}: no file {transform.path}")
    for number, edit in enumerate(transform.edits, 1):
        search = substitute(edit.search, values)
        found = text.count(search)
        if found != 1:
            raise TransformError(f"{transform.name}: search text {number} occurs {found} times in {transform.path}")
        text = text.replace(search, substitute(edit.replace, values))
    declared = {k.name: k for k in knobs if k.path == transform.path}
    for name, expression in transform.constants.items():
        result = evaluate(substitute(expression, values), lambda n: read_knob(text, n))
        text = _constant(text, name, result, declared.get(name))
    return {**files, transform.path: text}


@dataclass(frozen=True)
class Candidate:
    key: str
    transform: Transform
    values: dict
    files: dict[str, str]
    diff: str


def surface_transforms(spec: TaskSpec, surface: str) -> list[Transform]:
    return [t for t in spec.transforms if surface in (ALL_SURFACES, t.surface)]


def candidates(files: Mapping[str, str], transforms: list[Transform], knobs: list[Knob]) -> list[Candidate]:
    """The variants that apply to this tree and change it, in declaration order."""
    found = []
    for transform in transforms:
        for values in variants(transform):
            try:
                new = apply_transform(files, transform, values, knobs)
            except EditError:
                continue
            if new != files:
                key = variant_key(transform, values)
                found.append(Candidate(key, transform, values, new, diff_trees(files, new)))
    return found


def _rank(label: str | None) -> int:
    if label == "keep":
        return 1
    if label is None or label in PASSED:  # in flight, or measured without beating the incumbent
        return 2
    return 3


def choose(context: Context, options: list[Candidate]) -> tuple[Candidate | None, list[str]]:
    """The variant the lineage points to, and the ids of the trials that ranked it."""
    c = context.campaign_id
    tried_here = reads.tried_diffs(context.lineage, c, context.parent_id, MAX_CHILDREN)
    outcomes: dict[str, list[tuple[str, str | None]]] = {}  # key -> (trial, label)
    for trial in reads.policy_trials(context.lineage, c, CatalogSpecialist.policy, MAX_HISTORY):
        match = KEY.match(trial.hypothesis or "")
        if match:
            outcomes.setdefault(match[1], []).append((trial.trial_id, trial.label))

    def key_rank(key: str) -> int:
        return min((_rank(label) for _, label in outcomes.get(key, [])), default=0)

    def transform_rank(name: str) -> int:
        return min((key_rank(k) for k in outcomes if k.startswith(f"{name}(")), default=0)

    fresh = [o for o in options if o.diff not in tried_here]
    if not fresh:
        return None, [context.parent_id]
    best = min(fresh, key=lambda o: (key_rank(o.key), transform_rank(o.transform.name)))  # min keeps order
    related = [t for k, rows in outcomes.items() if k.startswith(f"{best.transform.name}(") for t, _ in rows]
    return best, [context.parent_id, *related[:20]]


class CatalogSpecialist(Specialist):
    policy = "catalog"

    async def propose(self, context: Context) -> Proposal | None:
        spec = context.task.spec
        transforms = surface_transforms(spec, context.surface)
        if not transforms:
            raise ValueError(f"surface {context.surface!r} of {context.task.name} declares no transforms")
        options = candidates(context.files, transforms, spec.knobs)
        if sees_lineage(context):
            choice, shown = choose(context, options)
        else:  # only the incumbent is visible: any applicable variant, drawn afresh each time
            choice = random.Random(draw_seed(context, self.seed)).choice(options) if options else None
            shown = [context.parent_id]
        if choice is None:
            return None
        return Proposal(
            hypothesis=HYPOTHESIS.format(key=choice.key, description=choice.transform.description),
            diff=choice.diff,
            params=knob_values(choice.files, spec.knobs),
            shown_ids=shown,
        )
