"""arx's Datasette plugin (registered by `arx ui`): only reads let in, the report page, diffs and logs
shown as text, and each trial id linked to its trial page."""

from __future__ import annotations

import asyncio
import html
from pathlib import Path
from urllib.parse import urlencode

from datasette import hookimpl
from datasette.utils.asgi import NotFound, Response
from markupsafe import Markup

from projections.ui_metadata import DATABASE, REPORT_PATH
from projections.ui_report import NoCampaign, report_page

# Columns (or, on a trial's page, fields) that hold a diff or a log: kept as lines, never wrapped into one.
DIFFS = {"diff", "diff vs parent"}
LOGS = {"log_tail", "log tail"}
PRE = "white-space:pre-wrap;font-size:12px;max-height:40em;overflow:auto;margin:0"
DIFF_COLOURS = {"+": "#1a7f37", "-": "#cf222e", "@": "#0550ae"}
READS = ("GET", "HEAD")


@hookimpl
def asgi_wrapper():
    return reads_only


def reads_only(app):
    """Refuse every request that is not a read, before Datasette sees it: besides the read-only
    connections (ui_database.py), no form or write query of Datasette's is ever reached."""

    async def wrapped(scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in READS:
            refusal = Response.text("arx ui is read-only: it answers GET and HEAD only\n", status=405,
                                    headers={"Allow": ", ".join(READS)})
            await refusal.asgi_send(send)
            return
        await app(scope, receive, send)

    return wrapped


@hookimpl
def register_routes():
    return [(f"^{REPORT_PATH}$", report)]


async def report(datasette, request):
    path = Path(datasette.get_database(DATABASE).path)
    try:
        # Reading and drawing take a while: off the event loop, so other pages are served meanwhile.
        text = await asyncio.to_thread(report_page, path, request.args.get("campaign") or None, datasette.urls)
    except NoCampaign as exc:
        raise NotFound(str(exc)) from None
    return Response.html(text)


@hookimpl
def render_cell(row, value, column, table, database, datasette):
    if database != DATABASE:
        return None
    keys = row.keys()
    name = row["field"] if column == "value" and "field" in keys else column
    if isinstance(value, str) and name in DIFFS:
        return Markup(f'<pre class="arx-diff" style="{PRE}">{_diff_lines(value)}</pre>')
    if isinstance(value, str) and name in LOGS:
        return Markup(f'<pre class="arx-log" style="{PRE}">{html.escape(value)}</pre>')
    if column == "trial_id" and value and "campaign_id" in keys:
        query = urlencode({"campaign": row["campaign_id"], "trial": value})
        href = f"{datasette.urls.query(DATABASE, 'trial')}?{query}"
        return Markup(f'<a href="{html.escape(href)}">{html.escape(value)}</a>')
    return None


def _diff_lines(diff: str) -> str:
    """The diff's lines, added ones green, removed ones red, hunk headers blue (file headers plain)."""
    lines = []
    for line in diff.splitlines():
        colour = None if line.startswith(("+++", "---")) else DIFF_COLOURS.get(line[:1])
        text = html.escape(line)
        lines.append(f'<span style="color:{colour}">{text}</span>' if colour else text)
    return "\n".join(lines)
