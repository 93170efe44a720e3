"""`arx ui` in a real browser: Datasette over the live lineage.db of a real campaign of the tiny task,
and the campaign report as a page of the same server.

One campaign serves every browser test (module fixture): the UI starts before any trial has run, its
report page and leaderboard are read once then, `arx replay` swaps lineage.db under it, and only then
does an executor run the campaign to its stop, so every outcome the pages show was folded after they
were first read, into a file the UI did not open at its start. Screenshots of the three pages are kept
under test-artifacts/ui/ (or $ARX_TEST_ARTIFACTS/ui/).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote
from urllib.request import urlopen

import pytest
from browser import launch, missing, screenshot, VIEWPORT
from cluster import ROOT, Cluster

from bus.local import LocalServer, free_port
from projections.lineage import SCHEMA, Lineage

CAMPAIGN = "ui-test"
PLOTS = ["score over trials", "labels per specialist over time", "lineage tree"]
UI_EXTRA = "scripts/setup.sh --ui installs the ui extra"
URL_LINE = re.compile(r"^arx ui: (http://\S+/) serves", re.M)


def wait_for(check, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every)
    raise TimeoutError(f"{what} within {timeout:.0f}s")


def read_db(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def ui_url(cluster: Cluster, name: str) -> str:
    """The address `arx ui` printed once it listened."""
    return wait_for(lambda: (m := URL_LINE.search(cluster.log(name))) and m.group(1), 30, "arx ui to listen")


def needs(module: str, installs: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"{module} is not installed: {installs}")


def report_state(page) -> dict:
    """What the report page shows now: its summary line and each plot as the browser loaded it."""
    return {
        "summary": page.locator("h2 + p").inner_text(),
        "plots": page.eval_on_selector_all(
            "img", "imgs => imgs.map(i => ({alt: i.alt, src: i.src, complete: i.complete, width: i.naturalWidth,"
            " height: i.naturalHeight}))"),
    }


@pytest.fixture(scope="module")
def browser():
    sync_api = needs("playwright.sync_api", "scripts/setup.sh installs the test extra")
    with sync_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def ui(tmp_path_factory, browser):
    """A stopped four-trial campaign whose lineage a running `arx ui` has served from before its first run."""
    needs("datasette", UI_EXTRA)
    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "arx-home"
    server = LocalServer(tmp / "nats", home=home).start()
    env = {**os.environ, "NATS_URL": server.url, "ARX_HOME": str(home), "ARX_ACK_WAIT_S": "5",
           "ARX_TASKS_PATH": str(ROOT / "tests" / "tasks"), "PYTHONPATH": str(ROOT)}
    cluster = Cluster(env, tmp / "logs")
    db = home / "lineage.db"
    page = browser.new_page(viewport=VIEWPORT)
    try:
        cluster.start("projector", "projector")
        wait_for(db.exists, 30, "the projector to make lineage.db")
        cluster.start("ui", "ui", "--port", "0")
        url = ui_url(cluster, "ui")
        cluster.start("evaluator", "evaluator", "--name", "evaluator-1")
        cluster.command("campaign", "start", "--task", "tiny", "--trials", "4", "--campaign", CAMPAIGN)
        cluster.start("agent", "agent", "--specialist", "tpe-main", "--surface", "main", "--campaign", CAMPAIGN)

        def report_of_the_campaign():
            page.goto(f"{url}-/report")
            return CAMPAIGN in page.title() and report_state(page)

        before = wait_for(report_of_the_campaign, 60, "the report page to show the campaign", every=0.5)
        # Datasette's own pages open their connections to the file as it is now, before the swap.
        page.goto(f"{url}lineage/leaderboard?campaign={CAMPAIGN}")
        before["leaderboard"] = page.locator("table.rows-and-columns tbody tr").count()
        replayed = cluster.run("replay", timeout=120)
        assert replayed.returncode == 0, replayed.stderr
        cluster.start("executor", "executor", "--name", "executor-1")
        summary = cluster.wait_stopped(CAMPAIGN, timeout=240)
        outcomes = "SELECT count(*) FROM trials WHERE campaign_id = ? AND outcome IS NOT NULL"
        wait_for(lambda: read_db(db, outcomes, (CAMPAIGN,)) == [(summary["trials_proposed"],)], 60,
                 "the projector to fold the outcomes")
        yield SimpleNamespace(url=url, db=db, page=page, summary=summary, before=before)
    finally:
        page.close()
        cluster.stop_all()
        server.kill()


def test_the_leaderboard_opens_on_the_incumbent_that_status_names(ui):
    ui.page.goto(f"{ui.url}lineage/leaderboard?campaign={CAMPAIGN}")
    screenshot(ui.page, "leaderboard")
    first = ui.page.locator("table.rows-and-columns tbody tr").first
    assert first.locator("td.col-rank").inner_text() == "1"
    assert first.locator("td.col-trial_id").inner_text() == ui.summary["best_trial"]
    assert float(first.locator("td.col-score").inner_text()) == ui.summary["best_score"]
    # Each trial id opens that trial's page.
    first.locator("td.col-trial_id a").click()
    assert ui.page.locator("td.col-value").first.inner_text() == ui.summary["best_trial"]


def test_a_trial_page_shows_its_diff_against_its_parent(ui):
    trial, parent, diff = read_db(
        ui.db, "SELECT trial_id, parent_id, diff FROM trials WHERE campaign_id = ? AND parent_id IS NOT NULL"
        " AND label != 'invalid_edit' ORDER BY proposed_seq LIMIT 1", (CAMPAIGN,))[0]
    added = next(line for line in diff.splitlines() if line.startswith("+VALUE = "))
    ui.page.goto(f"{ui.url}lineage/trial?campaign={CAMPAIGN}&trial={trial}")
    fields = dict(zip(ui.page.locator("td.col-field").all_inner_texts(),
                      ui.page.locator("td.col-value").all_inner_texts()))
    assert fields["trial"] == trial and fields["parent"] == parent
    assert fields["gate value"].startswith(("passed", "FAILED"))
    shown = ui.page.locator("pre.arx-diff").inner_text()
    assert added in shown.splitlines() and "-VALUE = " in shown
    # Lines, not one run-on paragraph: the diff keeps its lines, added ones in green.
    assert ui.page.locator("pre.arx-diff span", has_text=added).evaluate("s => getComputedStyle(s).color") \
        == "rgb(26, 127, 55)"
    screenshot(ui.page, "trial")


def test_the_report_page_shows_its_plots_and_follows_new_outcomes(ui):
    ui.page.goto(f"{ui.url}-/report")
    after = report_state(ui.page)
    # The cost plot once something was spent: after the runs, not before.
    for state, plots in ((ui.before, PLOTS), (after, [*PLOTS, "best score against cumulative cost"])):
        assert [plot["alt"] for plot in state["plots"]] == plots
        assert all(plot["complete"] and plot["width"] > 0 and plot["height"] > 0 for plot in state["plots"])
    # Read before any trial ran, the same page then showed no outcome; now it shows every one.
    assert "running" in ui.before["summary"] and "stopped" in after["summary"]
    assert f"{ui.summary['trials_proposed']} trials (baseline included), 0 in flight" in after["summary"]
    assert after["plots"][0]["src"] != ui.before["plots"][0]["src"]
    screenshot(ui.page, "report")
    # Each trial links to its Datasette row.
    best = ui.page.locator("h2 + p + p a").nth(1)
    assert best.inner_text() == ui.summary["best_trial"]
    best.click()
    ui.page.wait_for_url(f"**/lineage/trials/{CAMPAIGN},{ui.summary['best_trial']}")
    assert ui.summary["best_trial"] in ui.page.locator("h1").inner_text()


def test_the_ui_serves_the_file_that_replay_swapped_in(ui):
    # `arx replay` made lineage.db a link to a new file after the UI had read the old one (no trial
    # kept yet); the UI shows what the projector folded into the new one since.
    assert ui.db.is_symlink() and ui.before["leaderboard"] == 0
    response = ui.page.request.get(f"{ui.url}lineage/trials.json?campaign_id={CAMPAIGN}&label__notblank=1&_size=0")
    assert response.json()["filtered_table_rows_count"] == sum(ui.summary["labels"].values()) > 0


def test_a_write_through_the_ui_is_refused(ui):
    count = "SELECT count(*) FROM trials"
    (before,) = read_db(ui.db, count)
    ui.page.goto(f"{ui.url}lineage?sql={quote('DELETE FROM trials')}")
    assert "Statement must be a SELECT" in ui.page.content()
    for path, form in (("lineage", {"sql": "DELETE FROM trials"}), ("lineage/leaderboard", {"campaign": CAMPAIGN}),
                       ("lineage/trials/-/delete", {})):
        refused = ui.page.request.post(f"{ui.url}{path}", form=form)
        assert refused.status == 405, (path, refused.status)
        assert "read-only" in refused.text()
    assert read_db(ui.db, count) == [before] and before[0] > 0


def test_the_keep_chain_is_the_audits(ui):
    from projections.audit import audit_campaign

    rows = ui.page.request.get(f"{ui.url}lineage/keep_chain.json?campaign={CAMPAIGN}&_shape=array").json()
    lineage = Lineage(ui.db, readonly=True)
    try:
        chain = audit_campaign(lineage, CAMPAIGN)["keep_chain"]
    finally:
        lineage.close()
    assert chain[0]["trial"] == ui.summary["baseline_trial"] and chain[-1]["trial"] == ui.summary["best_trial"]
    assert [(r["trial_id"], r["delta vs parent"]) for r in rows] == [(s["trial"], s["delta"]) for s in chain]


def test_the_cost_ledger_adds_up_as_the_ledger_module_does(ui):
    from projections.ledger import campaign_ledger
    from projections.views import campaign

    rows = ui.page.request.get(f"{ui.url}lineage/costs.json?campaign={CAMPAIGN}&_shape=array").json()
    total = rows[-1]
    assert total["specialist"] == "all" and total["trials"] == ui.summary["trials_proposed"]
    lineage = Lineage(ui.db, readonly=True)
    try:
        ledger = campaign_ledger(lineage, campaign(lineage, CAMPAIGN))
    finally:
        lineage.close()
    assert ledger.device_s["cpu"] > 0
    assert total["cpu core-s"] == pytest.approx(ledger.device_s["cpu"], abs=1e-3)
    assert total["total usd"] == pytest.approx(ledger.total_usd, abs=1e-6)


# -- without a campaign ---------------------------------------------------------------------------


def empty_lineage(tmp_path) -> Path:
    path = tmp_path / "lineage.db"
    Lineage(path).close()
    return path


def test_listening_beyond_loopback_says_what_it_exposes(tmp_path):
    db = empty_lineage(tmp_path)
    for host, exposed in (("127.0.0.1", False), ("0.0.0.0", True)):
        proc = subprocess.Popen([sys.executable, str(ROOT / "arx.py"), "ui", "--db", str(db), "--host", host,
                                 "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            line = proc.stdout.readline()
        finally:
            proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert re.match(rf"arx ui: http://{re.escape(host)}:\d+/ serves {re.escape(str(db))} read-only", line), line
        assert ("not loopback" in err and "no login" in err and "ssh -L" in err) == exposed, err


def test_a_missing_lineage_is_refused(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "arx.py"), "ui", "--db", str(tmp_path / "none.db")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"arx ui: no lineage database at {tmp_path / 'none.db'}: start `arx projector` (or" \
        " scripts/up.sh) first\n"


def test_a_file_that_is_no_lineage_and_a_port_out_of_range_are_refused_before_serving(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite")
    for db, port, said in ((junk, "0", f"arx ui: {junk}: not a lineage database"),
                           (empty_lineage(tmp_path), "70000", "arx ui: --port 70000: give 0 to 65535")):
        done = subprocess.run([sys.executable, str(ROOT / "arx.py"), "ui", "--db", str(db), "--port", port],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 1 and done.stdout == "" and done.stderr.startswith(said), done.stderr


def test_even_datasettes_own_write_connection_cannot_write(tmp_path):
    needs("datasette", UI_EXTRA)
    from projections.ui import build
    from projections.ui_metadata import DATABASE

    db = empty_lineage(tmp_path)
    database = build(db).get_database(DATABASE)
    write = database.execute_write("INSERT INTO projection_state VALUES ('seq', 1)")
    with pytest.raises(sqlite3.OperationalError, match="readonly"), ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, write).result()  # a thread of its own: Playwright's loop runs in this one
    assert read_db(db, "SELECT count(*) FROM projection_state") == [(0,)]


def test_the_report_page_of_an_empty_lineage_says_so_and_waits(tmp_path):
    needs("datasette", UI_EXTRA)
    from projections.ui import build
    from projections.ui_report import RELOAD, NoCampaign, report_page

    db = empty_lineage(tmp_path)
    urls = build(db).urls
    text = report_page(db, None, urls)
    assert "no campaigns in the lineage yet" in text and RELOAD in text and "<img" not in text
    with pytest.raises(NoCampaign, match="no campaign 'other' in the lineage"):
        report_page(db, "other", urls)


def test_the_metadata_describes_only_columns_the_lineage_has():
    from projections.ui_metadata import QUERIES, TABLES

    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    for table, spec in TABLES.items():
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        assert columns, table
        assert set(spec.get("columns", {})) <= columns, (table, set(spec.get("columns", {})) - columns)
        assert set(spec.get("facets", [])) <= columns, table
    for name, query in QUERIES.items():  # each canned query runs on an empty lineage
        conn.execute(query["sql"], {"campaign": "", "trial": ""}).fetchall()


def test_up_script_serves_the_ui_while_its_campaign_runs(tmp_path):
    needs("datasette", UI_EXTRA)
    home = tmp_path / "arx-home"
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ARX_", "NATS_"))} | {
        "ARX_HOME": str(home), "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "ARX_TASKS_PATH": str(ROOT / "tests" / "tasks")}
    address = f"ui: http://127.0.0.1:{port}/ serves {home / 'lineage.db'} read-only"
    try:
        for reused in (False, True):  # run again, it reuses the UI and says where it is
            up = subprocess.run([str(ROOT / "scripts/up.sh"), "--task", "tiny", "--trials", "3", "--ui-port", str(port),
                                 "--detach"], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
            assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
            assert address in up.stdout and ("reusing ui" in up.stdout) == reused, up.stdout
            campaign = re.search(r"(?:started|reusing running) campaign (\S+)", up.stdout).group(1)
            with urlopen(f"http://127.0.0.1:{port}/-/report?campaign={campaign}", timeout=60) as page:
                assert f"<h2>{campaign}</h2>" in page.read().decode()
        ui_pid = int((home / "pids" / "ui.pid").read_text())
    finally:
        down = subprocess.run([str(ROOT / "scripts/down.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert f"stopped ui (pid {ui_pid})" in down.stdout, down.stdout
