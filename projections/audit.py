"""`arx audit`: what a finished (or running) campaign did, from the lineage database alone.

A pure function of the lineage: everything is sorted or in log order, nothing reads the clock, so
replaying the same log twice gives byte-identical output.

Definitions:
- trials_with_baseline, labels_with_baseline: every proposed trial, the baseline (the campaign's root
  trial, which measures the starting recipe) included, as the campaign's budget and `arx status` count
  them; the text and the HTML report show these. trials and labels: the same without the baseline, as
  the paper's released runs count them (kept in the JSON for those numbers). in_flight: trials without
  an outcome yet. per specialist: every trial, the baseline under its own specialist.
- best_gates: the evaluator's gate verdicts on the best trial (the incumbent).
- keep chain: the parent links from the best trial back to the baseline, each step with its score
  change over its parent (delta vs parent; the chain's first step has none).
- failure-to-repair chain: a trial F labelled with a failure label (bus.events.FAILURE_LABELS) and
  its repair R, the first trial in proposal order that passed (keep, discard or within_noise: it was
  measured inside every gate) and either descends from F (F is on R's parent chain) or is a later
  trial of F's specialist whose hypothesis names F's trial id as a word. The path runs from F to R
  through the parent links (for a repair by name: F then R).
- domain audit: each trial's edit checked against the paths of the surface its specialist joined on
  and the task's frozen paths (the campaign spec's `surfaces` and `frozen`), with the trial's own
  surface compared to the declared one.
- holdout (only with `arx audit --holdout`): the keeps measured again on held-out data, which runs task
  code and so is not a function of the lineage; evaluators/holdout.py measures and defines it, this
  module shows it.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import msgspec

from bus.connection import Bus
from bus.edits import ANY_PATH, check_edit, surface_paths
from bus.events import FAILURE_LABELS
from projections import ledger, views
from projections.follow import catch_up
from projections.lineage import Lineage

PASSING = frozenset({"keep", "discard", "within_noise"})
_WORD = re.compile(r"[A-Za-z0-9_-]+")


class Trial(msgspec.Struct, frozen=True):
    trial_id: str
    specialist: str
    surface: str
    parent_id: str | None
    hypothesis: str
    diff: str
    label: str | None
    score: float | None
    proposed_seq: int
    outcome_seq: int | None


def load_trials(lineage: Lineage, campaign_id: str) -> list[Trial]:
    """Every trial of the campaign in proposal order."""
    rows = lineage.db.execute(
        "SELECT trial_id, specialist, surface, parent_id, hypothesis, diff, label, score, proposed_seq,"
        " outcome_seq FROM trials WHERE campaign_id = ? ORDER BY proposed_seq, trial_id",
        (campaign_id,),
    ).fetchall()
    return [Trial(*row) for row in rows]


def audit(lineage: Lineage, campaign_id: str | None = None) -> dict:
    """{"campaigns": {name: audit}} for one campaign or all of them, in name order."""
    if campaign_id is not None:
        if views.campaign(lineage, campaign_id) is None:
            raise ValueError(f"no campaign {campaign_id!r} in the lineage")
        names = [campaign_id]
    else:
        names = [row["campaign_id"] for row in lineage.query("SELECT campaign_id FROM campaigns ORDER BY campaign_id")]
    return {"campaigns": {name: audit_campaign(lineage, name) for name in names}}


def audit_campaign(lineage: Lineage, campaign_id: str, trials: list | None = None) -> dict:
    """The campaign's audit; `trials`: its load_trials, when the caller has them already."""
    camp = views.campaign(lineage, campaign_id)
    trials = load_trials(lineage, campaign_id) if trials is None else trials
    root = next((t for t in trials if t.parent_id is None), None)
    counted = [t for t in trials if t is not root]
    declared = {
        row["specialist"]: row["surface"]
        for row in lineage.query("SELECT specialist, surface FROM specialists WHERE campaign_id = ?", (campaign_id,))
    }
    best = views.incumbent(lineage, campaign_id, camp.direction)
    baseline_score = root.score if root else None
    chain, broken_at = keep_chain({t.trial_id: t for t in trials}, best.trial_id) if best else ([], None)
    costs = ledger.trial_ledgers(lineage, camp)
    return {
        "task": camp.task,
        "metric": camp.metric,
        "direction": camp.direction,
        "arm": camp.arm,
        "stopped": camp.stopped_at is not None,
        "trials": len(counted),
        "trials_with_baseline": len(trials),
        "in_flight": sum(t.label is None for t in trials),
        "labels": _counts(t.label for t in counted if t.label),
        "labels_with_baseline": _counts(t.label for t in trials if t.label),
        "skipped_events": lineage.skipped(campaign_id),
        "baseline_trial": root.trial_id if root else None,
        "baseline_score": baseline_score,
        "best_trial": best.trial_id if best else None,
        "best_score": best.score if best else None,
        "best_gates": views.gates(lineage, campaign_id, best.trial_id) if best else [],
        "improvement_pct": views.improvement_pct(baseline_score, best.score if best else None),
        "specialists": per_specialist(trials, declared),
        "keep_chain": chain,
        "keep_chain_broken_at": broken_at,
        "failure_repairs": failure_repairs(trials),
        "domain": domain_audit(camp.spec, trials, declared),
        "cost": {
            "total": _asdict(ledger.campaign_ledger(lineage, camp)),
            "per_specialist": {k: _asdict(v) for k, v in ledger.ledger_by(lineage, camp, "specialist").items()},
            "per_label": {k: _asdict(v) for k, v in ledger.ledger_by(lineage, camp, "label").items()},
            "keep_chain": keep_chain_costs(chain, trials, costs),
            "best_by_cost": best_by_cost(trials, costs, camp.direction),
        },
    }


_asdict = msgspec.structs.asdict


def best_by_cost(trials: list[Trial], costs: dict[str, ledger.Ledger], direction: str) -> list[list]:
    """After each outcome, in log order: the dollars and device-hours spent so far and the best kept score."""
    better = min if direction == "min" else max
    points, usd, hours, best = [], 0.0, 0.0, None
    for trial in sorted((t for t in trials if t.outcome_seq is not None), key=lambda t: t.outcome_seq):
        spent = costs[trial.trial_id]
        usd += spent.total_usd
        hours += sum(spent.device_s.values()) / ledger.HOUR_S
        if trial.label == "keep" and trial.score is not None:
            best = trial.score if best is None else better(best, trial.score)
        points.append([round(usd, 6), round(hours, 6), best])
    return points


def keep_chain_costs(chain: list[dict], trials: list[Trial], costs: dict[str, ledger.Ledger]) -> list[dict]:
    """What each keep of the chain cost: its own trial, and every trial whose outcome came after the
    previous keep's and up to its own (the failures and discards it took to find it)."""
    by_id = {t.trial_id: t for t in trials}
    steps, previous = [], -1
    for step in chain:
        seq = by_id[step["trial"]].outcome_seq
        if seq is None:
            continue
        spent = [costs[t.trial_id].total_usd for t in trials
                 if t.outcome_seq is not None and previous < t.outcome_seq <= seq]
        steps.append({"trial": step["trial"], "usd": costs[step["trial"]].total_usd,
                      "usd_since_previous_keep": round(sum(spent), 6), "trials_since_previous_keep": len(spent)})
        previous = seq
    return steps


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def per_specialist(trials: list[Trial], declared: dict[str, str]) -> dict[str, dict]:
    grouped: dict[str, list[Trial]] = defaultdict(list)
    for trial in trials:
        grouped[trial.specialist].append(trial)
    return {
        name: {
            "surface": declared.get(name, group[0].surface),
            "trials": len(group),
            "labels": _counts(t.label for t in group if t.label),
        }
        for name, group in sorted(grouped.items())
    }


def keep_chain(by_id: dict[str, Trial], best_id: str) -> tuple[list[dict], str | None]:
    """The steps from the root to the best trial, and the parent the walk could not reach (None when
    it reached a root: a parent missing from the campaign or a loop would otherwise hide)."""
    path: list[Trial] = []
    seen: set[str] = set()
    current: str | None = best_id
    while current is not None and current in by_id and current not in seen:
        seen.add(current)
        path.append(by_id[current])
        current = by_id[current].parent_id
    path.reverse()
    steps = []
    before = None
    for trial in path:
        steps.append({
            "trial": trial.trial_id,
            "specialist": trial.specialist,
            "label": trial.label,
            "score": trial.score,
            "delta": views.delta(trial.score, before),
            "hypothesis": trial.hypothesis,
        })
        before = trial.score
    return steps, current


def failure_repairs(trials: list[Trial]) -> dict:
    """Failures and their repairs, as defined in the module docstring, in proposal order."""
    ids = {t.trial_id for t in trials}
    by_id = {t.trial_id: t for t in trials}
    children: dict[str, list[Trial]] = defaultdict(list)
    named_by: dict[str, list[Trial]] = defaultdict(list)
    for trial in trials:
        if trial.parent_id is not None:
            children[trial.parent_id].append(trial)
        for name in sorted(set(_WORD.findall(trial.hypothesis or "")) & ids - {trial.trial_id}):
            named_by[name].append(trial)
    failures = [t for t in trials if t.label in FAILURE_LABELS]
    chains = []
    for failed in failures:
        repair, via = _first_passing_descendant(failed, children), "descendant"
        named = next(
            (t for t in named_by[failed.trial_id]
             if t.specialist == failed.specialist and t.proposed_seq > failed.proposed_seq and t.label in PASSING),
            None,
        )
        if named is not None and (repair is None or named.proposed_seq < repair.proposed_seq):
            repair, via = named, "named"
        if repair is None:
            continue
        chains.append({
            "failed": failed.trial_id,
            "failed_label": failed.label,
            "specialist": failed.specialist,
            "repair": repair.trial_id,
            "repair_label": repair.label,
            "repair_specialist": repair.specialist,
            "via": via,
            "path": (_path(by_id, failed.trial_id, repair) if via == "descendant"
                     else [failed.trial_id, repair.trial_id]),
        })
    repaired = Counter(chain["failed_label"] for chain in chains)
    return {
        "failures": len(failures),
        "repaired": len(chains),
        "by_label": {
            label: {"failures": n, "repaired": repaired[label]}
            for label, n in _counts(t.label for t in failures).items()
        },
        "chains": chains,
    }


def _first_passing_descendant(failed: Trial, children: dict[str, list[Trial]]) -> Trial | None:
    best = None
    stack = list(children[failed.trial_id])
    seen = {failed.trial_id}
    while stack:
        trial = stack.pop()
        if trial.trial_id in seen:
            continue
        seen.add(trial.trial_id)
        if trial.label in PASSING and (best is None or trial.proposed_seq < best.proposed_seq):
            best = trial
        stack.extend(children[trial.trial_id])
    return best


def _path(by_id: dict[str, Trial], ancestor: str, trial: Trial) -> list[str]:
    path = [trial.trial_id]
    while path[-1] != ancestor:
        path.append(by_id[path[-1]].parent_id)
    return path[::-1]


def domain_audit(spec: dict, trials: list[Trial], declared: dict[str, str]) -> dict:
    """The edits that strayed from their specialist's declared surface (or touched frozen paths)."""
    edited = [t for t in trials if t.diff and t.diff.strip()]
    if not edited:
        return {"checked": 0, "strayed": [], "note": "no diffs recorded"}
    surfaces = {surface["name"]: surface["paths"] for surface in spec.get("surfaces", [])}
    frozen = spec.get("frozen", [])
    strayed = []
    for trial in edited:
        surface = declared.get(trial.specialist, trial.surface)
        problems = []
        if trial.surface != surface:
            problems.append(f"proposed on surface {trial.surface!r}, but {trial.specialist} joined on {surface!r}")
        try:
            paths = surface_paths(surfaces, surface)
        except ValueError:
            paths = ANY_PATH  # the frozen paths still hold
            problems.append(f"surface {surface!r} is not one of the task's {sorted(surfaces)}")
        problems.extend(str(problem) for problem in check_edit(trial.diff, paths, frozen))
        if problems:
            strayed.append({
                "trial": trial.trial_id,
                "specialist": trial.specialist,
                "surface": surface,
                "label": trial.label,
                "problems": problems,
            })
    return {"checked": len(edited), "strayed": strayed, "note": ""}


# -- rendering ------------------------------------------------------------------------------------


def render_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else format(value, ".10g")


def _short(text: str | None, width: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def render_text(report: dict) -> str:
    if not report["campaigns"]:
        return "no campaigns in the lineage\n"
    return "\n".join(_campaign_text(name, audit) for name, audit in report["campaigns"].items())


def plural(n: int, word: str) -> str:
    """`1 trial`, `2 trials`."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _campaign_text(name: str, a: dict) -> str:
    lines = [
        f"campaign {name}: task {a['task']}, {a['metric']} ({a['direction']}), arm {a['arm']},"
        f" {'stopped' if a['stopped'] else 'running'}",
        f"  {plural(a['trials_with_baseline'], 'trial')} ({views.COUNTED}), {a['in_flight']} in flight",
        f"  baseline {_num(a['baseline_score'])} ({a['baseline_trial'] or '-'}), best {_num(a['best_score'])}"
        f" ({a['best_trial'] or '-'}), change {views.change_text(a['improvement_pct'], a['direction'])}",
        f"  incumbent gates: {views.gates_text(a['best_gates'])}",
        f"  labels ({views.COUNTED}): "
        + (", ".join(f"{label} {n}" for label, n in a["labels_with_baseline"].items()) or "none"),
        "  events not folded: " + (", ".join(f"{why} {n}" for why, n in a["skipped_events"].items()) or "none"),
        "  per specialist:",
    ]
    for specialist, s in a["specialists"].items():
        counts = ", ".join(f"{label} {n}" for label, n in s["labels"].items())
        lines.append(f"    {specialist} [{s['surface']}]: {plural(s['trials'], 'trial')}; {counts}")
    lines.append(f"  keep chain ({plural(len(a['keep_chain']), 'step')}; score, delta vs parent):")
    if a["keep_chain_broken_at"] is not None:
        lines.append(f"    (stops at {a['keep_chain_broken_at']}: a parent missing from the campaign or a loop)")
    for step in a["keep_chain"]:
        lines.append(
            f"    {step['trial']} {step['specialist']} {step['label']} {_num(step['score'])}"
            f" ({_num(step['delta'])}): {_short(step['hypothesis'])}"
        )
    cost = a["cost"]
    lines.append(f"  cost: {ledger.text(cost['total'])}")
    for group in ("per_specialist", "per_label"):
        shown = ", ".join(f"{key} ${spent['total_usd']:.4g}" for key, spent in cost[group].items())
        lines.append(f"    {group.replace('_', ' ')}: {shown or 'none'}")
    for step in cost["keep_chain"]:
        lines.append(f"    keep {step['trial']}: ${step['usd']:.4g} itself, ${step['usd_since_previous_keep']:.4g} over"
                     f" {plural(step['trials_since_previous_keep'], 'trial')} since the previous keep")
    repairs = a["failure_repairs"]
    lines.append(f"  failure-to-repair: {repairs['repaired']} of {plural(repairs['failures'], 'failure')} repaired")
    for label, n in repairs["by_label"].items():
        lines.append(f"    {label}: {n['repaired']} of {n['failures']}")
    for chain in repairs["chains"]:
        lines.append(
            f"    {chain['failed']} {chain['failed_label']} -> {chain['repair']} {chain['repair_label']}"
            f" ({chain['via']}: {' > '.join(chain['path'])})"
        )
    domain = a["domain"]
    if domain["note"]:
        lines.append(f"  domain audit: {domain['note']}")
    else:
        lines.append(f"  domain audit: {len(domain['strayed'])} of {plural(domain['checked'], 'edit')} strayed")
        for stray in domain["strayed"]:
            problems = "; ".join(stray["problems"])
            lines.append(f"    {stray['trial']} {stray['specialist']} [{stray['surface']}]: {problems}")
    if "holdout" in a:
        lines += holdout_text(a["holdout"], a["direction"])
    return "\n".join(lines) + "\n"


def holdout_text(h: dict, direction: str) -> list[str]:
    """`arx audit --holdout`'s lines (evaluators/holdout.py measures them)."""
    if "skipped" in h:
        return [f"  held-out check: skipped, {h['skipped']}"]
    how = (f"each keep rerun {plural(h['rounds'], 'time')}, interleaved on this host, its gates judged on holdout()"
           if h["method"] == "remeasured" else "each keep's stored artifact re-scored on holdout()")
    rho = "-" if h["spearman"] is None else format(h["spearman"], ".3f")
    chain = h["chain"]
    better = "lower" if direction == "min" else "higher"
    lines = [
        f"  held-out check ({how}, a split no keep decision used):",
        f"    still improving on held-out data: {h['improving']} of {plural(h['keeps'], 'keep')};"
        f" rank correlation of validation and held-out scores {rho} (Spearman over {plural(h['ranked'], 'trial')})",
        f"    chain {chain['from'] or '-'} -> {chain['to'] or '-'}: validation {_num(chain['validation_delta'])}"
        f" ({_pct(chain['validation_pct'])}), held-out {_num(chain['holdout_delta'])} ({_pct(chain['holdout_pct'])});"
        f" {better} is better",
        "    per keep (validation score, delta vs incumbent | held-out score, delta vs the same incumbent):",
    ]
    for step in h["steps"]:
        verdict = {True: " improves", False: " does not improve", None: ""}[step["improves"]]
        lines.append(
            f"      {step['trial']} vs {step['incumbent'] or '-'}: {_num(step['validation'])}"
            f" ({_num(step['validation_delta'])}) | {_num(step['holdout'])} ({_num(step['holdout_delta'])}){verdict}"
        )
        lines += [f"        failed on held-out data: {failure}" for failure in step["holdout_failed"]]
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}%"


# -- cli ------------------------------------------------------------------------------------------


async def _caught_up() -> Lineage:
    lineage = Lineage()
    async with await Bus.connect(role="reader", name="arx-audit") as bus:
        await catch_up(bus, lineage)
    return lineage


def open_lineage(db: str | None) -> Lineage:
    """The lineage database at db, read-only; without db, the live log folded in memory."""
    if db is None:
        return asyncio.run(_caught_up())
    if not Path(db).is_file():
        raise ValueError(f"{db}: no such lineage database")
    lineage = Lineage(db, readonly=True)
    try:
        lineage.db.execute("SELECT 1 FROM campaigns, trials, specialists LIMIT 1")
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{db}: not a lineage database ({exc})") from None
    return lineage


def cli_arguments(parser) -> None:
    parser.add_argument("--db", help="read this lineage database instead of the live log")
    parser.add_argument("--campaign", help="only this campaign (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--html", metavar="DIR", help="also write DIR/index.html with plots")


def cli(args, holdout=None) -> int:
    """holdout(lineage, report), when given, adds each campaign's held-out section before the report is
    shown: evaluators.holdout, which handles `arx audit`, passes it for --holdout (measuring runs task code,
    which projections may not import)."""
    lineage = open_lineage(args.db)
    report = audit(lineage, args.campaign)
    if holdout is not None:
        holdout(lineage, report)
    print(render_json(report) if args.json else render_text(report), end="")
    if args.html:
        from projections.report import write_html  # matplotlib only when a report is asked for

        print(f"wrote {write_html(lineage, report, Path(args.html))}", file=sys.stderr)
    return 0
