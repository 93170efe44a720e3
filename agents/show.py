"""`arx show` and `arx recipe`: one trial of a campaign (by default its incumbent), and its whole tree.

They live in agents/, not with the other read commands in projections/, because a trial's tree is
rebuilt by agents.trees.Trees (the campaign's bundle in the object store plus the diffs along its
parent chain), and projections/ may not import agents/ (the layers in pyproject.toml).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import anyio

from agents.edits import EditError, tree_diff
from agents.trees import Trees
from bus.connection import Bus
from bus.events import check_token
from evaluators.spec import campaign_task
from projections import views
from projections.status import BUS_TIMEOUT_S, fold_campaign


async def _read(campaign: str | None, trial: str | None, work):
    """await work(trees, campaign row, trial row) on the named (or latest) campaign's named trial (or
    its incumbent), its events folded from the log."""
    with anyio.move_on_after(BUS_TIMEOUT_S):
        async with await Bus.connect(role="reader", name="arx-show") as bus:
            folded = await fold_campaign(bus, campaign)
            camp = None if folded is None else views.campaign(folded[1], folded[0])
            if camp is None:
                raise RuntimeError(f"no campaign {campaign} in the log" if campaign else "no campaign in the log")
            lineage, c = folded[1], camp.campaign_id
            if trial is None:
                best = views.incumbent(lineage, c, camp.direction)
                if best is None:
                    raise RuntimeError(f"campaign {c} has no incumbent yet: name a trial")
                trial = best.trial_id
            row = views.trial_detail(lineage, c, trial)
            if row is None:
                raise ValueError(f"no trial {trial} in campaign {c}")
            return await work(Trees(bus, lineage, c), camp, row)
    raise RuntimeError(f"reading the log took longer than {BUS_TIMEOUT_S:.0f}s")


async def _tree(trees: Trees, trial_id: str) -> dict[str, str]:
    try:
        return await trees.tree(trial_id)
    except LookupError as exc:  # a campaign or an ancestor the log lacks
        raise RuntimeError(str(exc)) from None


async def _details(trees: Trees, camp: views.Campaign, row: dict) -> dict:
    c, lineage = camp.campaign_id, trees.lineage
    root = views.root_trial(lineage, c)
    best = views.incumbent(lineage, c, camp.direction)
    parent = views.trial_detail(lineage, c, row["parent_id"]) if row["parent_id"] else None
    parent_score = parent["score"] if parent else None
    try:
        whole = tree_diff(await _tree(trees, root.trial_id), await _tree(trees, row["trial_id"]))
    except EditError as exc:  # an edit that never applied (an invalid_edit) has no tree
        whole = f"(no tree: {exc})\n"
    return {
        "campaign": c,
        "task": camp.task,
        "metric": camp.metric,
        "direction": camp.direction,
        "trial": row["trial_id"],
        "incumbent": best is not None and best.trial_id == row["trial_id"],
        "specialist": row["specialist"],
        "surface": row["surface"],
        "parent": row["parent_id"],
        "hypothesis": row["hypothesis"],
        "label": row["label"],
        "score": row["score"],
        # Both signed as improvement_pct: the score minus the other's.
        "scored_against": row["incumbent_id"],
        "delta_vs_incumbent": row["delta"],
        "delta_vs_parent": views.delta(row["score"], parent_score),
        "gates": views.gates(lineage, c, row["trial_id"]),
        "metrics": row["metrics"],
        "evidence": row["evidence_message"],
        "baseline_trial": root.trial_id,
        "diff_vs_parent": row["diff"] or "",
        "diff_vs_baseline": whole,
        "log_tail": row["log_tail"] or "",
    }


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def render(d: dict) -> str:
    better = "lower" if d["direction"] == "min" else "higher"
    role = " (the incumbent)" if d["incumbent"] else ""
    lines = [
        f"trial {d['trial']}{role} of campaign {d['campaign']}, task {d['task']}",
        f"specialist  {d['specialist']} [{d['surface']}]",
        f"parent      {d['parent'] or '- (this is the baseline)'}",
        f"label       {d['label'] or '- (no outcome yet)'}",
        f"score       {_num(d['score'])} {d['metric']} ({better} is better)",
        f"delta vs incumbent  {_num(d['delta_vs_incumbent'])} (against {d['scored_against'] or '-'}, when scored)",
        f"delta vs parent     {_num(d['delta_vs_parent'])}",
        "hypothesis  " + " ".join((d["hypothesis"] or "").split()),
    ]
    if d["evidence"]:
        lines.append(f"evidence    {d['evidence']}")
    lines.append("gates:")
    lines += [
        f"  {g['metric']:<16} measured {_num(g['measured']):>10}  limit {_num(g['limit']):>10}"
        f"  {'passed' if g['passed'] else 'FAILED'}"
        for g in d["gates"]
    ] or ["  none recorded"]
    lines.append("metrics: " + (", ".join(f"{k} {_num(v)}" for k, v in d["metrics"].items()) or "none"))
    text = "\n".join(lines) + "\n"
    text += _section(f"diff vs parent ({d['parent'] or '-'})", d["diff_vs_parent"])
    text += _section(f"diff vs baseline ({d['baseline_trial']}): the whole change", d["diff_vs_baseline"])
    return text + _section("log tail", d["log_tail"])


def _section(title: str, body: str) -> str:
    return f"\n== {title} ==\n" + (body if body.endswith("\n") else body + "\n" if body else "(empty)\n")


def _check(args) -> None:
    if args.campaign is not None:
        check_token("campaign", args.campaign)
    if args.trial is not None:
        check_token("trial", args.trial)


def _trial_arguments(parser) -> None:
    parser.add_argument("trial", nargs="?", help="a trial id (default: the campaign's incumbent)")
    parser.add_argument("--campaign", help="campaign id (default: the latest)")


def cli_show_arguments(parser) -> None:
    _trial_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cli_show(args) -> int:
    _check(args)
    details = anyio.run(_read, args.campaign, args.trial, _details)
    print(json.dumps(details) if args.json else render(details), end="\n" if args.json else "")
    return 0


def cli_recipe_arguments(parser) -> None:
    _trial_arguments(parser)
    parser.add_argument("--out", required=True, help="the folder to write the tree into (new or empty)")


def cli_recipe(args) -> int:
    _check(args)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} is not an empty folder")

    async def tree(trees: Trees, camp: views.Campaign, row: dict) -> tuple[dict, str, dict[str, str]]:
        return camp, row["trial_id"], await _tree(trees, row["trial_id"])

    camp, trial, files = anyio.run(_read, args.campaign, args.trial, tree)
    # The task's trusted prepare() puts the training data beside the tree, as an executor does before a run.
    task = campaign_task(camp.task, camp.spec)
    for name, text in sorted(files.items()):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
    task.module().prepare(out)
    command = " ".join(shlex.quote(arg.replace("{python}", "python")) for arg in task.spec.command)
    print(f"wrote trial {trial} ({len(files)} files and the task's data) to {out}; run it: cd {shlex.quote(str(out))} && {command}")
    return 0
