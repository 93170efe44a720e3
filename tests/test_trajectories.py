"""Other harnesses' trajectories (autoresearch's results.tsv, AIDE's journal.json) become campaigns that
fold and audit like native ones. The sample files are written here in each format's documented shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agents.edits import apply_diff
from bus.events import TrialProposed, TrialScored, encode
from conftest import ROOT
from projections.trajectories import detect_format, import_events

AUTORESEARCH = """commit\tval_bpb\tmemory_gb\tstatus\tdescription
a1b2c3d\t0.997900\t44.0\tkeep\tbaseline
b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR to 0.04
c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU activation
d4e5f6a\t0.000000\t0.0\tcrash\tdouble model width (OOM)
e5f6a7b\t0.990100\t44.1\tkeep\tlonger warmdown
"""


def aide_node(node_id: str, step: int, code: str, value, *, buggy=False, exc=None, plan="") -> dict:
    return {"id": node_id, "step": step, "code": code, "plan": plan or f"plan {node_id}", "ctime": 1700000000 + step,
            "metric": {"value": value, "maximize": True}, "is_buggy": buggy, "exc_type": exc,
            "analysis": f"analysis of {node_id}", "exec_time": 1.5, "_term_out": []}


def aide_journal() -> dict:
    a = "import sklearn\nmodel = 'rf'\nn = 100\n"
    return {
        "__version": "2",
        "nodes": [
            aide_node("aaaa", 0, a, 0.80),
            aide_node("bbbb", 1, "import torch\nboom()\n", None, buggy=True, exc="NameError"),
            aide_node("cccc", 2, a.replace("n = 100", "n = 300"), 0.85),
            aide_node("dddd", 3, a.replace("n = 100", "n = 300\ndepth = 4"), 0.83),
            aide_node("eeee", 4, "import torch\nfit()\n", 0.90),
        ],
        "node2parent": {"cccc": "aaaa", "dddd": "cccc", "eeee": "bbbb"},
    }


def outcomes(events) -> dict[str, TrialScored]:
    return {e.trial_id: e for e in events if isinstance(e, TrialScored)}


def proposals(events) -> dict[str, TrialProposed]:
    return {e.trial_id: e for e in events if isinstance(e, TrialProposed)}


def test_an_autoresearch_results_tsv_builds_each_row_on_the_latest_keep(tmp_path):
    tsv = tmp_path / "mar5" / "results.tsv"
    tsv.parent.mkdir()
    tsv.write_text(AUTORESEARCH)
    assert detect_format(tsv) == "autoresearch"
    imported = import_events(tsv, "mar5")
    started = imported.events[0]
    assert (started.metric, started.direction, started.task, started.max_trials) == ("val_bpb", "min", "mar5", 4)
    ids = list(proposals(imported.events))
    assert ids == ["r0000-a1b2c3d", "r0001-b2c3d4e", "r0002-c3d4e5f", "r0003-d4e5f6a", "r0004-e5f6a7b"]
    parents = [p.parent_id for p in proposals(imported.events).values()]
    assert parents == [None, ids[0], ids[1], ids[1], ids[1]]  # a discard or a crash does not advance the branch
    scored = outcomes(imported.events)
    assert [(s.label, s.score) for s in scored.values()] == [
        ("keep", 0.9979), ("keep", 0.9932), ("discard", 1.005), ("crash", None), ("keep", 0.9901)]
    assert scored[ids[3]].evidence.message == "autoresearch status: crash"
    assert scored[ids[1]].metrics == {"memory_gb": 44.2} and scored[ids[1]].incumbent_id == ids[0]
    again = import_events(tsv, "mar5").events
    assert [encode(e) for e in again] == [encode(e) for e in imported.events]  # twice: byte for byte the same


def test_an_aide_journal_keeps_its_tree_its_code_as_diffs_and_verdicts_in_its_direction(tmp_path):
    path = tmp_path / "spaceship" / "journal.json"
    path.parent.mkdir()
    path.write_text(json.dumps(aide_journal()))
    assert detect_format(path) == "aide"
    imported = import_events(path, "aide-run")
    started = imported.events[0]
    assert (started.metric, started.direction, started.task) == ("metric", "max", "spaceship")
    proposed = proposals(imported.events)
    scored = outcomes(imported.events)
    a, b, c, d, e = proposed
    assert [proposed[t].parent_id for t in (a, b, c, d, e)] == [None, None, a, c, b]
    assert [(scored[t].label, scored[t].score) for t in (a, b, c, d, e)] == [
        ("keep", 0.8), ("crash", None), ("keep", 0.85), ("discard", 0.83), ("keep", 0.9)]
    assert scored[b].evidence.message.startswith("aide: is_buggy=True, exc_type=NameError")
    # Each node's whole script comes back from its draft's through the diffs along its parents.
    journal = {n["id"]: n["code"] for n in aide_journal()["nodes"]}
    tree = {}
    for trial in (a, c, d):
        tree = apply_diff(tree, proposed[trial].diff)
    assert tree == {"solution.py": journal["dddd"]}
    assert [proposed[t].specialist for t in (a, c, e)] == ["aide-draft", "aide-improve", "aide-improve"]


def test_arx_import_tsv_tells_the_formats_apart_and_audit_shows_them_together(arx_env, tmp_path):
    (tmp_path / "ar").mkdir()
    (tmp_path / "ar" / "results.tsv").write_text(AUTORESEARCH)
    (tmp_path / "journal.json").write_text(json.dumps(aide_journal()))

    def arx(*args: str) -> str:
        done = subprocess.run([sys.executable, str(ROOT / "arx.py"), *args], env=arx_env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    arx("import-tsv", str(tmp_path / "ar" / "results.tsv"), "--campaign", "ar")
    arx("import-tsv", str(tmp_path / "journal.json"), "--campaign", "aide")
    report = json.loads(arx("audit", "--json"))["campaigns"]
    assert (report["ar"]["best_trial"], report["ar"]["best_score"], report["ar"]["direction"]) == (
        "r0004-e5f6a7b", 0.9901, "min")
    assert (report["aide"]["best_score"], report["aide"]["direction"], report["aide"]["trials"]) == (0.9, "max", 4)


def test_a_file_of_no_known_format_or_without_a_direction_is_one_clear_error(tmp_path):
    odd = tmp_path / "odd.tsv"
    odd.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="give --format seed\\|autoresearch\\|aide"):
        detect_format(odd)
    journal = aide_journal()
    for node in journal["nodes"]:
        node["metric"]["maximize"] = None
    path = tmp_path / "journal.json"
    path.write_text(json.dumps(journal))
    with pytest.raises(ValueError, match="give --direction min\\|max"):
        import_events(path, "x")
    assert import_events(path, "x", direction="min").events[0].direction == "min"


def test_a_file_forced_into_the_wrong_format_is_one_clear_error(tmp_path):
    one_column = tmp_path / "results.tsv"
    one_column.write_text("commit\nabc\n")
    with pytest.raises(ValueError, match="not an autoresearch results.tsv, missing columns: memory_gb"):
        import_events(one_column, "x", fmt="autoresearch")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(ValueError, match="not an autoresearch results.tsv"):
        import_events(empty, "x", fmt="autoresearch")
