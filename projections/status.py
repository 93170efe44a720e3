"""`arx status`: one campaign at a glance, from a lineage file or straight from the log.

Without --db it folds the log into memory itself, so it works without a running projector and from
any host that reaches NATS; with --campaign it reads only that campaign's events.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import anyio
import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bus import subjects
from bus.connection import Bus
from bus.events import check_token
from projections import ledger, stop_rules, views
from projections.follow import catch_up
from projections.lineage import Lineage

BUS_TIMEOUT_S = 60.0
# A recent trial's delta: its score minus that of the incumbent it was scored against (signed, as improvement_pct).
DELTA = "delta vs incumbent"
# Piped or redirected, rich would cut tables at 80 columns; a file or a pipe gets every column.
PIPE_WIDTH = 160


def summary(lineage: Lineage, campaign: str | None) -> dict | None:
    """views.summary, with how close the campaign is to each stop rule and budget, and its ledger."""
    found = views.summary(lineage, campaign)
    if found is not None:
        camp = views.campaign(lineage, found["campaign"])
        found["stop_rules"] = stop_rules.progress(camp.stop_rules, stop_rules.recent(lineage, camp))
        found["ledger"] = msgspec.structs.asdict(ledger.campaign_ledger(lineage, camp))
        found["budgets"] = ledger.progress(lineage, camp)
    return found


def read_file(path: Path, campaign: str | None) -> dict | None:
    if not path.is_file():
        raise RuntimeError(f"no lineage database at {path}")
    lineage = Lineage(path, readonly=True)
    try:
        return summary(lineage, campaign)
    except sqlite3.Error as exc:
        raise RuntimeError(f"{path} is not a readable lineage database ({exc})") from None
    finally:
        lineage.close()


async def read_log(campaign: str | None) -> dict | None:
    with anyio.move_on_after(BUS_TIMEOUT_S):
        async with await Bus.connect(role="reader", name="arx-status") as bus:
            folded = await fold_campaign(bus, campaign)
            if folded is None:
                return None
            campaign, lineage = folded
            return summary(lineage, campaign)
    raise RuntimeError(f"reading the log took longer than {BUS_TIMEOUT_S:.0f}s")


async def fold_campaign(bus: Bus, campaign: str | None) -> tuple[str, Lineage] | None:
    """The campaign's id (default: the latest started) and its events alone folded into memory."""
    campaign = campaign or await latest_campaign(bus)
    if campaign is None:
        return None
    lineage = Lineage()
    await catch_up(bus, lineage, subject=subjects.of_campaign(campaign))
    return campaign, lineage


async def latest_campaign(bus: Bus) -> str | None:
    """The id of the campaign started last (the default of status, watch, show and export), or None."""
    started = Lineage()
    await catch_up(bus, started, subject=subjects.STARTED_CAMPAIGNS)  # few events: no need to read the rest
    latest = views.campaign(started)
    return latest.campaign_id if latest else None


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def render(summary: dict, console: Console) -> None:
    s = summary
    better = "lower" if s["direction"] == "min" else "higher"
    state = f"stopped ({s['stop_reason']})" if s["stopped"] else "running"
    console.print(
        f"[bold]{s['campaign']}[/bold]  {s['task']}  {s['metric']} ({better} is better)  arm {s['arm']}  {state}"
    )
    console.print(
        f"trials ({views.COUNTED}): {s['trials_proposed']} proposed, {s['trials_scored']} scored,"
        f" {s['in_flight']} in flight, budget {s['max_trials']}"
    )
    console.print(
        f"baseline {_number(s['baseline_score'])} ({s['baseline_trial'] or '-'})  ->  best {_number(s['best_score'])}"
        f" ({s['best_trial'] or '-'})  change {views.change_text(s['improvement_pct'], s['direction'])}"
    )
    if s["best_trial"]:
        console.print(f"incumbent gates: {views.gates_text(s['best_gates'])}")
    prior = "" if s["noise_prior"] is None else f" (task prior {s['noise_prior'] * 100:.1f}%)"
    console.print(
        f"noise floor {s['noise'] * 100:.1f}%{prior} of the score: a keep must beat the incumbent by more;"
        f" {s['confirmed']} close wins settled by interleaved reruns"
    )

    for rule in s["stop_rules"]:
        console.print(f"stop rule {rule['rule']}: {rule['says']}")
    console.print(f"cost: {ledger.text(s['ledger'])}")
    for budget in s["budgets"]:
        console.print(f"budget {budget['budget']}: {budget['says']}")

    if s["skipped_events"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in s["skipped_events"].items())
        console.print(f"[bold red]events not folded[/bold red] (untrusted or unreadable, see arx audit): {reasons}")

    title = f"labels ({views.COUNTED})"
    labels = Table(title=title, min_width=len(title))  # the title on one line
    labels.add_column("label")
    labels.add_column("trials", justify="right")
    for label, n in s["labels"].items():
        labels.add_row(Text(label), str(n))
    console.print(labels)

    recent = Table(title=f"last {len(s['recent'])} outcomes")
    rows = [
        (row["trial_id"], row["specialist"], row["label"], _number(row["score"]), _number(row["delta"], 3))
        for row in s["recent"]
    ]
    names = ("trial", "specialist", "label", "score", DELTA)
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(names)]
    for name, width in zip(names, widths):
        recent.add_column(name, justify="right" if name in ("score", DELTA) else "left", min_width=width)
    # The hypothesis gets what is left of the line (each column adds 2 padding and 1 border).
    left = console.width - sum(widths) - 3 * (len(names) + 1) - 1
    recent.add_column("hypothesis", no_wrap=True, overflow="ellipsis", max_width=max(left, 10))
    for row, shown in zip(s["recent"], rows):
        # Text, not markup: a hypothesis is free text from an agent ("[/tmp] ..." is no closing tag).
        recent.add_row(*map(Text, shown), Text(" ".join(row["hypothesis"].split())))
    console.print(recent)


def wide_console() -> Console:
    """A console that drops no column when stdout is not a terminal."""
    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def cli_arguments(parser) -> None:
    parser.add_argument("--campaign")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--db", help="read this lineage database instead of the live log")


def cli(args) -> int:
    if args.campaign is not None:
        check_token("campaign", args.campaign)
    if args.db:
        summary = read_file(Path(args.db), args.campaign)
    else:
        summary = anyio.run(read_log, args.campaign)
    if summary is None:
        where = f"campaign {args.campaign}" if args.campaign else "campaign"
        sys.stderr.write(f"arx status: no {where} in {args.db or 'the log'}\n")
        return 1
    if args.json:
        print(json.dumps(summary))
    else:
        render(summary, wide_console())
    return 0
