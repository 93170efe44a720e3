"""`arx audit`: keep chain, failure-to-repair chains and the domain audit, and the same bytes on every replay."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from bus.connection import Bus, StoredMessage
from bus.eventfile import export_campaign, iter_file
from bus.events import CampaignStarted, ObjectRef, SpecialistJoined, TrialProposed, TrialScored, encode
from conftest import ROOT, SEED_RUNS, needs_seed_runs
from projections.audit import audit, open_lineage, render_json, render_text
from projections.lineage import Lineage
from projections.seedruns import publish_events, tsv_events

SPEC = {
    "surfaces": [{"name": "main", "paths": ["train.py"]}, {"name": "notes", "paths": ["notes/"]}],
    "frozen": ["data/"],
}


def diff(path: str) -> str:
    return f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-A = 1\n+A = 2\n"


def campaign_events() -> list:
    """A small campaign whose keep chain, repairs and strays are known by construction."""
    c = "c"
    events = [
        CampaignStarted(event_id="c-started", campaign_id=c, occurred_at="t", task="tiny", metric="value",
                        direction="min", max_trials=9, bundle=ObjectRef(name="b", size=0, sha256="0" * 64), spec=SPEC),
        SpecialistJoined(event_id="c-a", campaign_id=c, occurred_at="t", specialist="a", surface="main", policy="p"),
        SpecialistJoined(event_id="c-b", campaign_id=c, occurred_at="t", specialist="b", surface="notes", policy="p"),
    ]
    trials = [
        # trial, specialist, parent, diff, label, score, hypothesis
        ("baseline", "baseline", None, "", "keep", 10.0, "the recipe"),
        ("t1", "a", "baseline", diff("train.py"), "keep", 9.0, "lower A"),
        ("t2", "a", "t1", diff("notes/x.md"), "invalid_edit", None, "write notes"),
        ("t3", "b", "t1", diff("notes/x.md"), "size_blocked", None, "long notes"),
        ("t4", "b", "t3", diff("notes/y.md"), "discard", 9.5, "shorter notes"),
        ("t5", "a", "t1", diff("train.py"), "keep", 8.5, "retry t2 without the notes"),
        ("t6", "b", "t1", diff("data/x.npz"), "crash", None, "like t2"),
        ("t7", "a", "t5", diff("train.py"), "crash", None, "lower A more"),
        ("t8", "b", "t1", diff("train.py"), "discard", 9.9, "fix t7's crash"),
    ]
    for trial, specialist, parent, edit, label, score, hypothesis in trials:
        surface = {"a": "main", "b": "notes"}.get(specialist, "baseline")
        events.append(TrialProposed(event_id=f"{trial}-p", campaign_id=c, occurred_at="t", trial_id=trial,
                                    specialist=specialist, surface=surface, parent_id=parent, hypothesis=hypothesis,
                                    diff=edit))
        events.append(TrialScored(event_id=f"{trial}-o", campaign_id=c, occurred_at="t", trial_id=trial, label=label,
                                  score=score))
    return events


def fold(events: list) -> Lineage:
    lineage = Lineage()
    lineage.apply([StoredMessage(seq, event.subject, encode(event)) for seq, event in enumerate(events, 1)])
    return lineage


def test_keep_chain_repairs_and_domain_audit():
    a = audit(fold(campaign_events()))["campaigns"]["c"]
    assert (a["trials"], a["baseline_trial"], a["baseline_score"], a["best_trial"], a["best_score"]) == (
        8, "baseline", 10.0, "t5", 8.5,
    )
    assert a["improvement_pct"] == -15.0
    assert a["labels"] == {"crash": 2, "discard": 2, "invalid_edit": 1, "keep": 2, "size_blocked": 1}
    # What the text shows: the count and labels with the baseline, as `arx status` counts them.
    assert (a["trials_with_baseline"], a["labels_with_baseline"]["keep"], a["best_gates"]) == (9, 3, [])
    text = render_text(audit(fold(campaign_events())))
    for shown in ("9 trials (baseline included), 0 in flight", "change -15.000% (lower is better)",
                  "labels (baseline included): crash 2, discard 2, invalid_edit 1, keep 3, size_blocked 1",
                  "baseline [baseline]: 1 trial; keep 1", "keep chain (3 steps; score, delta vs parent)",
                  "incumbent gates: none recorded"):
        assert shown in text, (shown, text)
    assert a["specialists"]["b"] == {"surface": "notes", "trials": 4,
                                     "labels": {"crash": 1, "discard": 2, "size_blocked": 1}}
    assert [(s["trial"], s["delta"]) for s in a["keep_chain"]] == [("baseline", None), ("t1", -1.0), ("t5", -0.5)]
    assert a["keep_chain_broken_at"] is None
    repairs = a["failure_repairs"]
    assert (repairs["failures"], repairs["repaired"]) == (4, 2)
    assert [(c["failed"], c["repair"], c["via"], c["path"]) for c in repairs["chains"]] == [
        ("t2", "t5", "named", ["t2", "t5"]),  # t6 also names t2, but it is b's and it crashed
        ("t3", "t4", "descendant", ["t3", "t4"]),
    ]  # t7 is named only by another specialist's trial: not repaired
    assert repairs["by_label"]["crash"] == {"failures": 2, "repaired": 0}
    domain = a["domain"]
    assert domain["checked"] == 8
    assert {s["trial"]: s["problems"] for s in domain["strayed"]} == {
        "t2": ["notes/x.md: is outside the surface's paths ['train.py']"],
        "t6": ["data/x.npz: is frozen"],
        "t8": ["train.py: is outside the surface's paths ['notes/']"],
    }


def test_a_broken_parent_link_is_reported():
    events = campaign_events()
    events = [e for e in events if getattr(e, "trial_id", None) != "t1"]
    a = audit(fold(events))["campaigns"]["c"]
    assert [s["trial"] for s in a["keep_chain"]] == ["t5"]
    assert a["keep_chain_broken_at"] == "t1"
    assert "stops at t1" in render_text(audit(fold(events)))


@needs_seed_runs
def test_audit_is_byte_identical_across_replays(arx_env, tmp_path):
    """Two replays of the live log, and a lineage file folded from an exported copy, give the same bytes."""
    off = tsv_events(SEED_RUNS / "pg_ablation_lineage_off" / "results.tsv", "off").events
    on = tsv_events(SEED_RUNS / "pg_ablation_lineage_on" / "results.tsv", "on").events

    async def load():
        async with await Bus.connect(role="admin") as bus:
            await publish_events(bus, on)
            await publish_events(bus, off)
            await export_campaign(bus, "off", tmp_path / "off.jsonl")

    asyncio.run(load())
    first, second = audit(open_lineage(None)), audit(open_lineage(None))
    assert render_json(first) == render_json(second) and render_text(first) == render_text(second)
    assert list(first["campaigns"]) == ["off", "on"]

    db = tmp_path / "off.db"
    lineage = Lineage(db)
    lineage.apply(list(iter_file(tmp_path / "off.jsonl")))
    lineage.close()
    done = subprocess.run([sys.executable, str(ROOT / "arx.py"), "audit", "--db", str(db), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == render_json({"campaigns": {"off": first["campaigns"]["off"]}})
    assert json.loads(done.stdout)["campaigns"]["off"]["improvement_pct"] == -0.332


def test_audit_cli_errors_are_one_line(tmp_path):
    missing = subprocess.run([sys.executable, str(ROOT / "arx.py"), "audit", "--db", str(tmp_path / "none.db")],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert missing.returncode == 1
    assert missing.stderr == f"arx audit: {tmp_path / 'none.db'}: no such lineage database\n"
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("just text, long enough to not be an empty database" * 100)
    wrong = subprocess.run([sys.executable, str(ROOT / "arx.py"), "audit", "--db", str(not_a_db)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert wrong.returncode == 1 and wrong.stderr.startswith(f"arx audit: {not_a_db}: not a lineage database")
