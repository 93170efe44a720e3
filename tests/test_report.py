"""`arx audit --html`: a self-contained page with the three plots, the same bytes from the same log."""

from __future__ import annotations

import base64
import re

from bus.eventfile import iter_file
from conftest import SEED_RUNS, needs_seed_runs
from projections.audit import audit
from projections.lineage import Lineage
from projections.report import write_html
from projections.seedruns import tsv_events, write_events

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def imported(tmp_path, run: str) -> Lineage:
    path = tmp_path / f"{run}.jsonl"
    write_events(tsv_events(SEED_RUNS / run / "results.tsv", run).events, path)
    lineage = Lineage()
    lineage.apply(list(iter_file(path)))
    return lineage


@needs_seed_runs
def test_html_report_is_self_contained_and_reproducible(tmp_path):
    pages = []
    for replay in ("first", "second"):
        lineage = imported(tmp_path, "pg_main")
        pages.append(write_html(lineage, audit(lineage), tmp_path / replay).read_bytes())
    assert pages[0] == pages[1]
    page = pages[0].decode()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert [alt for alt, _ in images] == ["score over trials", "labels per specialist over time", "lineage tree"]
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for _, data in images)
    # Nothing to fetch: every src is inline data, and no scripts, stylesheets or links.
    assert re.findall(r'\bsrc="(?!data:)', page) == []
    assert not re.search(r"<script|<link|href=|url\(", page)
    assert "exp_750" in page and "-0.813%" in page and "no diffs recorded" in page
    # The table counts what the plots' legends count: every trial, the baseline included.
    assert "901 trials (baseline included)" in page and "delta vs parent" in page


def test_empty_lineage_gives_a_page_that_says_so(tmp_path):
    lineage = Lineage()
    page = write_html(lineage, audit(lineage), tmp_path / "out").read_text()
    assert "no campaigns in the lineage" in page and "<img" not in page
