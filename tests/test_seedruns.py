"""Importing the seed release's results.tsv: the paper's numbers come back, and no row is ever lost."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bus.eventfile import iter_file
from bus.events import TrialProposed, TrialScored, encode
from conftest import ROOT, SEED_RUNS, needs_seed_runs
from projections.audit import audit
from projections.lineage import Lineage
from projections.seedruns import tsv_events, write_events

HEADER = (
    "exp_id timestamp specialist parent_exp baseline_exp domain hypothesis expected_delta status val_bpb"
    " delta_vs_best artifact_bytes train_s eval_s total_s job_name snapshot_path notes"
).split()


def file_labels(tsv: Path) -> Counter:
    """The status column as a plain TSV reader sees it, the baseline row aside."""
    with open(tsv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return Counter(row["status"] or "unparsed" for row in rows if row["status"] != "baseline")


def fold_file(path: Path) -> Lineage:
    lineage = Lineage()
    lineage.apply(list(iter_file(path)))
    return lineage


@needs_seed_runs
@pytest.mark.parametrize(
    "run, trials, best, best_trial, improvement",
    [
        ("pg_main", 900, 1.07221, "exp_750", -0.813),
        ("pg_ablation_lineage_on", 200, 1.073142, "exp_176", -0.727),
        ("pg_ablation_lineage_off", 200, 1.077413, "exp_075", -0.332),
    ],
)
def test_seed_runs_reproduce_the_paper_numbers(tmp_path, run, trials, best, best_trial, improvement):
    tsv = SEED_RUNS / run / "results.tsv"
    path = tmp_path / f"{run}.jsonl"
    write_events(tsv_events(tsv, run).events, path)
    lineage = fold_file(path)
    a = audit(lineage)["campaigns"][run]
    assert (a["trials"], a["baseline_score"], a["best_score"], a["best_trial"], a["improvement_pct"]) == (
        trials, 1.081, best, best_trial, improvement,
    )
    # The score column and its direction come from the file; the task is the run's folder.
    assert (a["direction"], a["metric"], a["task"], a["in_flight"]) == ("min", "val_bpb", run, 0)
    assert a["labels"] == dict(file_labels(tsv))
    assert a["domain"]["note"] == "no diffs recorded"
    # One proposal and one outcome per row: the baseline is the one trial the count leaves out.
    (rows,) = lineage.db.execute("SELECT count(*) FROM trials WHERE outcome = 'TrialScored'").fetchone()
    assert rows == trials + 1


@needs_seed_runs
def test_the_file_and_the_bus_get_the_same_events_once(arx_env, tmp_path):
    tsv = SEED_RUNS / "pg_ablation_lineage_off" / "results.tsv"
    path = tmp_path / "off.jsonl"

    def arx(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "arx.py"), *args], env=arx_env, capture_output=True,
                              text=True, timeout=120, cwd=ROOT)

    to_file = arx("import-tsv", str(tsv), "--campaign", "off", "--to-file", str(path))
    first = arx("import-tsv", str(tsv), "--campaign", "off")
    second = arx("import-tsv", str(tsv), "--campaign", "off")
    from_file = arx("import", str(path))
    exported = arx("export", "--campaign", "off", str(tmp_path / "exported.jsonl"))
    done = (to_file, first, second, from_file, exported)
    assert [p.returncode for p in done] == [0] * 5, "".join(p.stderr for p in done)
    assert "201 rows (0 unparsed, 0 with a field dropped) as 414 events" in to_file.stdout
    assert "414 lines: 414 published" in first.stdout
    assert "414 lines: 0 published, 414 already present" in second.stdout
    assert "414 lines: 0 published, 414 already present" in from_file.stdout
    assert (tmp_path / "exported.jsonl").read_bytes() == path.read_bytes()


@needs_seed_runs
def test_importing_is_deterministic():
    tsv = SEED_RUNS / "pg_ablation_lineage_on" / "results.tsv"
    first = [encode(e) for e in tsv_events(tsv, "on").events]
    assert first == [encode(e) for e in tsv_events(tsv, "on").events]
    assert b'"occurred_at":"2026-05-01T03:55:39.000000Z"' in first[0]  # the baseline row's time, not now


def test_unknown_layout_names_the_missing_columns(tmp_path):
    tsv = tmp_path / "results.tsv"
    header = "exp_id timestamp specialist parent_exp domain hypothesis expected_delta score".split()
    tsv.write_text("\t".join(header) + "\n" + "\t".join("12345678") + "\n")
    with pytest.raises(ValueError, match="missing columns: status$"):
        tsv_events(tsv, "x")


# A NanoChat-like layout: the score (higher is better) right after status, val_bpb beside it as a side metric.
NANOCHAT = ("exp_id timestamp specialist parent_exp baseline_exp domain hypothesis expected_delta status core_metric"
            " val_bpb train_s job_name snapshot_path notes").split()


def write_run(folder: Path, header: list[str], rows: list[dict], best: dict | None = None) -> Path:
    """A results.tsv (and best.json) of the release's shape; each row gives only the fields it sets."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(r.get(c, "") for c in header) for r in rows]
    (folder / "results.tsv").write_text("\n".join(lines) + "\n")
    if best is not None:
        (folder / "best.json").write_text(json.dumps(best))
    return folder / "results.tsv"


def nanochat_rows(core: tuple[str, str, str] = ("0.16", "0.18", "0.15")) -> list[dict]:
    base = {"timestamp": "2026-01-01T00:00:00Z", "specialist": "opt", "domain": "opt", "hypothesis": "h",
            "expected_delta": "0", "baseline_exp": "000", "parent_exp": "000"}
    return [
        {**base, "exp_id": "000", "specialist": "baseline", "parent_exp": "", "status": "baseline",
         "core_metric": core[0], "val_bpb": "0.90"},
        {**base, "exp_id": "001", "status": "keep", "core_metric": core[1], "val_bpb": "0.95", "train_s": "600"},
        {**base, "exp_id": "002", "status": "discard", "core_metric": core[2], "val_bpb": "0.85"},
    ]


def test_the_score_and_its_direction_come_from_the_file_not_from_known_names(tmp_path):
    # The first measurement after status, higher is better since the kept trial went up: not val_bpb.
    started, *_ = tsv_events(write_run(tmp_path / "nano", NANOCHAT, nanochat_rows()), "nano").events
    assert (started.metric, started.direction, started.task) == ("core_metric", "max", "nano")
    scored = [e for e in tsv_events(tmp_path / "nano" / "results.tsv", "nano").events if isinstance(e, TrialScored)]
    assert scored[1].score == 0.18 and scored[1].metrics == {"val_bpb": 0.95, "train_s": 600.0}

    # Reordered, with val_bpb right after status: the run's best.json names the score it was judged on.
    reordered = [c for c in NANOCHAT if c != "core_metric"]
    reordered.insert(reordered.index("notes"), "core_metric")
    best = {"exp_id": "001", "specialist": "opt", "core_metric": 0.18, "delta_vs_prev": "+0.02"}
    started = tsv_events(write_run(tmp_path / "re" / "blackboard", reordered, nanochat_rows(), best), "re").events[0]
    assert (started.metric, started.direction, started.task) == ("core_metric", "max", "re")

    # Renamed and lower-is-better: a kept trial below the baseline says so.
    renamed = [c if c != "core_metric" else "loss" for c in NANOCHAT]
    rows = [{("loss" if k == "core_metric" else k): v for k, v in r.items()} for r in nanochat_rows(("2.0", "1.5", "2.5"))]
    started = tsv_events(write_run(tmp_path / "loss", renamed, rows), "loss").events[0]
    assert (started.metric, started.direction) == ("loss", "min")


def test_an_undecidable_score_or_direction_names_the_flag_to_give(tmp_path):
    no_number = nanochat_rows()
    no_number[0] = {**no_number[0], "core_metric": "", "val_bpb": ""}
    tsv = write_run(tmp_path / "a", NANOCHAT, no_number)
    with pytest.raises(ValueError, match="cannot tell which column is the score .*: give --metric NAME"):
        tsv_events(tsv, "a")
    no_keep = [r for r in nanochat_rows() if r["status"] != "keep"]
    tsv = write_run(tmp_path / "b", NANOCHAT, no_keep)
    with pytest.raises(ValueError, match="lower or a higher core_metric is better .*: give --direction min\\|max"):
        tsv_events(tsv, "b")
    # The flags decide where the file cannot, and override it where it can.
    started = tsv_events(tsv, "b", metric="val_bpb", direction="min", task="nanochat").events[0]
    assert (started.metric, started.direction, started.task) == ("val_bpb", "min", "nanochat")
    with pytest.raises(ValueError, match="--metric nope is not a column"):
        tsv_events(tsv, "b", metric="nope")


def row(exp_id: str, status: str, score: str = "", *, parent: str = "exp_000", expected: str = "-0.001",
        time: str = "2026-01-01T00:10:00Z", notes: str = "", specialist: str = "opt") -> list[str]:
    return [exp_id, time, specialist, parent, "000", "opt", f"idea {exp_id}", expected, status, score, "",
            "15000000", "600.1", "500.2", "1400", "job", "", notes]


def test_messy_rows_are_kept_with_labels_that_say_so(tmp_path):
    rows = [
        row("000", "baseline", "1.0810", parent="", specialist="baseline", time="2026-01-01T00:00:00Z"),
        row("001", "keep", "1.0800"),
        row("002", "discard", "1.0805", parent="001"),
        row("003", "")[:7],  # a short row whose status never came
        row("004", "kept", "1.07"),
        row("005", "discard", "abc"),
        row("006", "keep", ""),
        row("007", "discard", "1.09", expected="minus_0.1"),
        row("008", "discard", "1.09", time="yesterday"),
        row("001", "discard", "1.09"),
        row("009", "discard", "1.09") + ["surplus"],
        row("010", "crash", notes="boom | RuntimeError: x (train.py:12 in main)"),
    ]
    tsv = tmp_path / "results.tsv"
    tsv.write_text("\n".join("\t".join(r) for r in [HEADER, *rows]) + "\n")
    imported = tsv_events(tsv, "messy")
    assert (imported.rows, imported.unparsed, imported.dropped) == (12, 6, 2)
    proposals = [e for e in imported.events if isinstance(e, TrialProposed)]
    outcomes = {e.trial_id: e for e in imported.events if isinstance(e, TrialScored)}
    assert len(proposals) == len(outcomes) == 12
    assert [p.trial_id for p in proposals] == [
        "exp_000", "exp_001", "exp_002", "exp_003", "exp_004", "exp_005", "exp_006", "exp_007", "exp_008",
        "exp_001-line11", "exp_009", "exp_010",
    ]
    assert [p.parent_id for p in proposals[:3]] == [None, "exp_000", "exp_001"]
    labels = {trial: e.label for trial, e in outcomes.items()}
    assert labels == {
        "exp_000": "keep", "exp_001": "keep", "exp_002": "discard", "exp_003": "unparsed", "exp_004": "unparsed",
        "exp_005": "unparsed", "exp_006": "unparsed", "exp_007": "discard", "exp_008": "discard",
        "exp_001-line11": "unparsed", "exp_009": "unparsed", "exp_010": "crash",
    }
    reasons = {trial: outcomes[trial].evidence.message for trial in labels}
    assert "7 of 18 columns (missing expected_delta, status" in reasons["exp_003"]
    assert "empty status" in reasons["exp_003"]
    assert "unknown status 'kept'" in reasons["exp_004"]
    assert "val_bpb 'abc' is not a number" in reasons["exp_005"]
    assert "status keep without a val_bpb" in reasons["exp_006"]
    assert "exp_id repeats line 3" in reasons["exp_001-line11"]
    assert "1 columns more than the header" in reasons["exp_009"] and "surplus" in reasons["exp_009"]
    assert "import dropped: expected_delta 'minus_0.1' is not a number" in reasons["exp_007"]
    assert "timestamp 'yesterday' is not an ISO time" in reasons["exp_008"]
    # Nothing of an unparsed row is lost: every field is in its evidence.
    assert all(field in reasons["exp_004"] for field in rows[4])
    assert outcomes["exp_008"].occurred_at == outcomes["exp_007"].occurred_at == "2026-01-01T00:10:00.000000Z"
    assert outcomes["exp_010"].evidence.frame == "train.py:12 in main"
    assert outcomes["exp_002"].metrics == {
        "artifact_bytes": 15000000, "train_s": 600.1, "eval_s": 500.2, "total_s": 1400,
    }
    assert (outcomes["exp_002"].incumbent_id, outcomes["exp_002"].incumbent_score) == ("exp_000", 1.081)
    assert all(outcomes[t].score is None for t, label in labels.items() if label == "unparsed")
    joined = [e.specialist for e in imported.events if e.__class__.__name__ == "SpecialistJoined"]
    assert joined == ["opt"]



def test_arx_import_tsv_says_which_flag_to_give_and_takes_it(tmp_path):
    tsv = write_run(tmp_path / "run", NANOCHAT, [r for r in nanochat_rows() if r["status"] != "keep"])
    command = [sys.executable, str(ROOT / "arx.py"), "import-tsv", str(tsv), "--campaign", "c", "--to-file",
               str(tmp_path / "c.jsonl")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("arx import-tsv: ") and "give --direction min|max" in refused.stderr
    done = subprocess.run([*command, "--direction", "max"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
    assert (first["metric"], first["direction"], first["task"]) == ("core_metric", "max", "run")
