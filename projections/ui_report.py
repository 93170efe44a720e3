"""The campaign report as a page of `arx ui`: the audit's plots and tables (projections/report.py),
read afresh from lineage.db on each load, each trial linked to its row in Datasette.

One campaign a page (by default the one started last), so a page costs the same however many
campaigns the lineage holds; a running campaign's page reloads itself.
"""

from __future__ import annotations

import html
import threading
from pathlib import Path
from urllib.parse import urlencode

from datasette.utils import tilde_encode

from projections.audit import audit_campaign, load_trials
from projections.lineage import Lineage
from projections.report import campaign_section, page
from projections.ui_metadata import DATABASE, QUERIES, REPORT_PATH

RELOAD_S = 30  # how often a running campaign's page reloads itself
RELOAD = f'<meta http-equiv="refresh" content="{RELOAD_S}">'
# matplotlib promises no thread safety; the pages are drawn one at a time.
_DRAWING = threading.Lock()


class NoCampaign(LookupError):
    pass


def report_page(path: Path, campaign: str | None, urls) -> str:
    """The page of `campaign` (None: the one started last) in the lineage file at path; urls is
    Datasette's URL builder, for the links."""
    lineage = Lineage(path, readonly=True)
    try:
        lineage.db.conn.execute("BEGIN")  # one snapshot: the numbers and the plots agree
        names = [row[0] for row in lineage.db.execute("SELECT campaign_id FROM campaigns ORDER BY started_seq DESC")]
        if not names and campaign is None:
            return page("arx report", _nav(urls, None, []) + "<p>no campaigns in the lineage yet</p>", RELOAD)
        name = names[0] if campaign is None else campaign
        if name not in names:
            raise NoCampaign(f"no campaign {name!r} in the lineage")
        trials = load_trials(lineage, name)
        report = audit_campaign(lineage, name, trials)
    finally:
        lineage.close()

    def trial_href(trial_id: str) -> str:
        return urls.row(DATABASE, "trials", ",".join(map(tilde_encode, (name, trial_id))))

    with _DRAWING:
        section = campaign_section(name, report, trials, trial_href)
    if report["stopped"]:
        return page(f"arx report: {name}", _nav(urls, name, names) + section)
    note = f"<p><small>reloads every {RELOAD_S} s while the campaign runs</small></p>"
    return page(f"arx report: {name}", _nav(urls, name, names) + note + section, RELOAD)


def _nav(urls, campaign: str | None, names: list[str]) -> str:
    """Links to the lineage's tables, the canned queries of this campaign, and the other campaigns' pages."""
    query = f"?{urlencode({'campaign': campaign})}" if campaign else ""
    links = [(urls.database(DATABASE), "lineage tables")]
    links += [(urls.query(DATABASE, name) + query, spec["title"]) for name, spec in QUERIES.items()]
    others = [(f"{REPORT_PATH}?{urlencode({'campaign': other})}", other) for other in names if other != campaign]
    parts = [f"<h1>arx report</h1><p>{_links(links)}</p>"]
    if others:
        parts.append(f"<p>other campaigns: {_links(others)}</p>")
    return "\n".join(parts)


def _links(links: list[tuple[str, str]]) -> str:
    return " | ".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a>' for href, text in links)
