"""`arx audit --holdout`: do a campaign's keeps generalize beyond the data they were chosen on?

Each keep (the baseline included) is measured again on data no keep decision used, the task's holdout()
split (evaluators/contract.py: HoldoutSplit):
- an artifact-scored task: the trial's stored artifact, from the object store, scored on holdout() in the
  evaluator's sandbox and judged as the evaluator judges a trial (gates included);
- a timing task (its score is the run's wall time, which no data re-scores): the trial's tree run again,
  interleaved with the other keeps' over a few rounds on this host (evaluators/remeasure.py), each run
  judged with its artifact scored on holdout(); its held-out score is the median of the runs that passed.

Per keep, in the order the keeps became the incumbent: the validation score and its delta against the
incumbent it beat (what the keep decision saw), beside its held-out score and delta against that same
incumbent; how many keeps still improve on held-out data; for the chain, the change from its first trial
(the baseline) to the incumbent on both; and Spearman's rank correlation of the keeps' validation and
held-out scores (None below 3 keeps, or when either side is constant).

`arx audit`'s handler lives here rather than in projections/audit.py: measuring runs task code, which the
lineage projections may not import (the layers in pyproject.toml). Without --holdout it is that module's.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path

from bus import subjects
from bus.argtypes import at_least_two
from bus.connection import Bus
from bus.events import TrialFinished
from bus.settings import load_settings
from evaluators import labels
from evaluators.remeasure import remeasure
from evaluators.sandbox import scratch
from evaluators.scoring import evaluate_artifact, stored_artifact
from evaluators.spec import Task, TaskSpec, campaign_task
from projections import audit, views
from projections.lineage import Lineage

ROUNDS = 3


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation; None below 3 pairs (two points always rank alike) or for a constant side."""
    if len(xs) < 3 or len(set(xs)) == 1 or len(set(ys)) == 1:
        return None
    return round(statistics.correlation(_ranks(xs), _ranks(ys)), 9)


def _ranks(values: list[float]) -> list[float]:
    """Each value's rank from 0; tied values share the mean of the ranks they span."""
    ordered = sorted(values)
    return [ordered.index(v) + (ordered.count(v) - 1) / 2 for v in values]


def keeps(lineage: Lineage, campaign_id: str) -> list[dict]:
    """The kept trials in the order they became the incumbent, each with the incumbent it was scored against."""
    return lineage.query(
        "SELECT trial_id AS trial, specialist, score, incumbent_id AS incumbent FROM trials"
        " WHERE campaign_id = ? AND label = 'keep' ORDER BY outcome_seq",
        (campaign_id,),
    )


async def rescore(bus: Bus, task: Task, campaign_id: str, trial_ids: list[str], data: tuple, *, home: Path,
                  progress) -> dict[str, labels.Verdict]:
    """Each trial's stored artifact scored on `data` (inputs, targets) in the sandbox, judged with the run
    that made it."""
    inputs, targets = data
    verdicts = {}
    async with scratch(home, f"holdout-{campaign_id}-") as (_, pool):
        for trial_id in trial_ids:
            finished = await bus.last_event(subjects.trial(campaign_id, trial_id, "finished.*"))
            if not isinstance(finished, TrialFinished):
                raise RuntimeError(f"campaign {campaign_id}: trial {trial_id} has no run in the log to re-score")
            artifact = await stored_artifact(bus, finished)  # or why there is none: that keep's failure
            evaluation = artifact if isinstance(artifact, labels.Evaluation) else await evaluate_artifact(
                pool, task, artifact, inputs, targets, name=trial_id)
            verdict = verdicts[trial_id] = labels.judge(finished, task.spec, evaluation)
            progress(f"{trial_id} on holdout(): {verdict.label}, {task.spec.score} {verdict.score}")
    return verdicts


def unusable(task: Task) -> str | None:
    """Why the campaign's keeps cannot be measured on held-out data, or None."""
    if task.spec.scored_from == "log":
        return f"task {task.name} is scored from its runs' logs: there is no artifact to score on held-out data"
    if not callable(getattr(task.module(), "holdout", None)):
        return f"task {task.name} declares no holdout() split (evaluators/contract.py: HoldoutSplit)"
    return None


async def measure(bus: Bus, lineage: Lineage, campaign_id: str, rounds: int, progress) -> dict:
    """The held-out section of one campaign's audit: {"skipped": why} when it cannot be measured."""
    camp = views.campaign(lineage, campaign_id)
    try:
        task = campaign_task(camp.task, camp.spec)
        why = unusable(task)
    except ValueError as exc:  # a task this host does not have, or a task.py that does not load
        why = str(exc)
    if why:
        return {"skipped": why}
    kept = keeps(lineage, campaign_id)
    ids = [k["trial"] for k in kept]
    data = await asyncio.to_thread(task.module().holdout)
    home = Path(load_settings().home)
    if task.spec.score == "wall_s":
        reruns = await remeasure(bus, task, campaign_id, ids, rounds, data, home=home, progress=progress)
        runs = {i: [r.verdict for r in reruns if r.trial_id == i] for i in ids}
        method, order = "remeasured", [r.trial_id for r in reruns]
    else:
        verdicts = await rescore(bus, task, campaign_id, ids, data, home=home, progress=progress)
        runs = {i: [verdicts[i]] for i in ids}
        method, order, rounds = "rescored", ids, 1
    best = views.incumbent(lineage, campaign_id, camp.direction)
    return {"method": method, "rounds": rounds, "run_order": order,
            **summarize(task.spec, kept, runs, best.trial_id if best else None)}


def summarize(spec: TaskSpec, kept: list[dict], runs: dict[str, list[labels.Verdict]], best: str | None) -> dict:
    """Per keep and for the chain: validation beside held-out scores and deltas (see the module docstring)."""
    validation = {k["trial"]: k["score"] for k in kept}
    held = {}
    steps = []
    for keep in kept:
        trial, incumbent = keep["trial"], keep["incumbent"]
        passed = [v.score for v in runs[trial] if v.label == labels.PASSED]
        held[trial] = statistics.median(passed) if passed else None
        delta = views.delta(held[trial], held.get(incumbent))
        improves = None if incumbent is None else delta is not None and spec.better(held[trial], held[incumbent])
        steps.append({
            "trial": trial,
            "specialist": keep["specialist"],
            "incumbent": incumbent,
            "validation": keep["score"],
            "validation_delta": views.delta(keep["score"], validation.get(incumbent)),
            "holdout": held[trial],
            "holdout_delta": delta,
            "improves": improves,
            "holdout_runs": passed,
            "holdout_failed": [f"{v.label}: {v.evidence.message}" for v in runs[trial] if v.label != labels.PASSED],
        })
    measured = [s for s in steps if s["holdout"] is not None]
    first = steps[0]["trial"] if steps else None
    return {
        "keeps": sum(s["incumbent"] is not None for s in steps),
        "improving": sum(s["improves"] is True for s in steps),
        "spearman": spearman([s["validation"] for s in measured], [s["holdout"] for s in measured]),
        "ranked": len(measured),
        "chain": {
            "from": first,
            "to": best,
            "validation_delta": views.delta(validation.get(best), validation.get(first)),
            "holdout_delta": views.delta(held.get(best), held.get(first)),
            "validation_pct": views.improvement_pct(validation.get(first), validation.get(best)),
            "holdout_pct": views.improvement_pct(held.get(first), held.get(best)),
        },
        "steps": steps,
    }


async def add_holdout(lineage: Lineage, report: dict, rounds: int) -> None:
    """Put each audited campaign's held-out section into the audit report, as "holdout"."""
    async with await Bus.connect(role="reader", name="arx-audit-holdout") as bus:
        for campaign_id, section in report["campaigns"].items():
            section["holdout"] = await measure(bus, lineage, campaign_id, rounds, _progress(campaign_id))


def _progress(campaign_id: str):
    return lambda line: print(f"{campaign_id}: {line}", file=sys.stderr, flush=True)


def cli_audit_arguments(parser) -> None:
    audit.cli_arguments(parser)
    parser.add_argument("--holdout", action="store_true",
                        help="measure every keep again on the task's holdout() split, which no keep decision used"
                             " (a timing task: rerun the keeps interleaved on this host)")
    parser.add_argument("--rounds", type=at_least_two, default=ROUNDS,
                        help=f"with --holdout, for a timing task: runs of each keep (default {ROUNDS})")


def cli_audit(args) -> int:
    if not args.holdout:
        return audit.cli(args)
    return audit.cli(args, holdout=lambda lineage, report: asyncio.run(add_holdout(lineage, report, args.rounds)))
