"""`arx watch`: a live progress bar for one campaign, from the log, until the campaign stops."""

from __future__ import annotations

import anyio
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bus.connection import Bus
from projections import views
from projections.follow import LiveLineage


def describe(summary: dict) -> str:
    if summary["best_score"] is None:
        return "no incumbent yet"
    change = summary["improvement_pct"]
    change_text = f" ({change:+.2f}% vs baseline)" if change is not None else ""
    return f"best {summary['metric']} {summary['best_score']:.4g} by {summary['best_trial']}{change_text}"


async def watch(campaign_id: str | None) -> dict:
    async with await Bus.connect(role="reader", name="arx-watch") as bus:
        live = LiveLineage(bus)
        async with anyio.create_task_group() as tg:
            tg.start_soon(live.run)
            summary = await _show(live, campaign_id)
            tg.cancel_scope.cancel()
    return summary


async def _show(live: LiveLineage, campaign_id: str | None) -> dict:
    columns = (TextColumn("{task.fields[name]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns) as progress:
        bar = None
        while True:
            summary = views.summary(live.lineage, campaign_id)
            if summary is not None:
                campaign_id = summary["campaign"]
                done = views.counted_outcomes(live.lineage, campaign_id)
                if bar is None:
                    bar = progress.add_task(describe(summary), total=summary["max_trials"], name=campaign_id)
                progress.update(bar, completed=done, description=describe(summary))
                if summary["stopped"]:
                    return summary
            await live.changed(timeout=1.0)


def cli_arguments(parser) -> None:
    parser.add_argument("--campaign", help="campaign id (default: the latest)")


def cli(args) -> int:
    anyio.run(watch, args.campaign)
    return 0
