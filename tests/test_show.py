"""`arx show` and `arx recipe` on a real campaign of the tiny task, and the README's `arx status` example
held against the output of the same campaign."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from cluster import Cluster
from test_readme_example import readme_block

from evaluators.spec import load_task

CAMPAIGN = "tiny-show"


@pytest.fixture
def campaign(arx_env, tmp_path):
    """A stopped four-trial campaign: the baseline and three TPE trials on the VALUE knob."""
    cluster = Cluster(arx_env, tmp_path / "logs")
    return cluster, cluster.run_tiny_campaign(CAMPAIGN)


def show(cluster: Cluster, *args: str) -> dict:
    return json.loads(cluster.command("show", "--json", *args, timeout=60))


def test_show_and_recipe_rebuild_a_trial_from_the_log(campaign, tmp_path):
    cluster, summary = campaign
    best = show(cluster)  # the latest campaign's incumbent
    assert (best["trial"], best["incumbent"], best["campaign"]) == (summary["best_trial"], True, CAMPAIGN)
    assert best["gates"] == summary["best_gates"]
    value_gate = next(g for g in best["gates"] if g["metric"] == "value")
    assert (value_gate["limit"], value_gate["passed"], value_gate["measured"]) == (0.0, True, best["score"])

    children = [show(cluster, row["trial_id"], "--campaign", CAMPAIGN) for row in summary["recent"]
                if row["trial_id"] != summary["baseline_trial"] and row["score"] is not None]
    assert children, summary
    child = children[0]
    assert "+VALUE = " in child["diff_vs_parent"]
    assert "-VALUE = 5.0" in child["diff_vs_baseline"]  # the starting recipe's value
    parent = show(cluster, child["parent"])
    assert child["delta_vs_parent"] == pytest.approx(child["score"] - parent["score"])
    text = cluster.command("show", child["trial"], timeout=60)
    for shown in (f"trial {child['trial']}", "delta vs incumbent", "delta vs parent", "== diff vs parent",
                  "== diff vs baseline", "== log tail", "measured"):
        assert shown in text, (shown, text)

    out = tmp_path / "recipe"
    wrote = cluster.arx("recipe", child["trial"], "--out", str(out), timeout=60)
    assert wrote.returncode == 0, wrote.stderr
    assert f"wrote trial {child['trial']}" in wrote.stdout
    (line,) = [line for line in (out / "train.py").read_text().splitlines() if line.startswith("VALUE = ")]
    assert f"+{line}" in child["diff_vs_baseline"]
    # The written tree runs as it is and gives the trial's score back.
    env = {**os.environ, "ARX_ARTIFACT_DIR": str(tmp_path / "artifact")}
    subprocess.run([sys.executable, "train.py"], cwd=out, env=env, check=True, timeout=60)
    assert float((tmp_path / "artifact" / "value.txt").read_text()) == child["score"]

    refused = cluster.arx("recipe", "--out", str(out), timeout=60)
    assert (refused.returncode, refused.stderr) == (1, f"arx recipe: {out} is not an empty folder\n")
    for args, message in ((("show", "nope"), f"arx show: no trial nope in campaign {CAMPAIGN}\n"),
                          (("show", "--campaign", "other"), "arx show: no campaign other in the log\n"),
                          (("show", "bad id"), "arx show: trial ")):
        done = cluster.arx(*args, timeout=60)
        assert done.returncode == 1 and done.stderr.startswith(message) and done.stdout == "", (args, done)
        assert len(done.stderr.splitlines()) == 1


def names(task: str) -> set[str]:
    """The words of an output that are a task's own: its name, metric and gates."""
    spec = load_task(task).spec
    return {spec.name, spec.metric, *(gate.metric for gate in spec.gates)}


def shape(line: str, own: set[str]) -> str:
    """A line with its values blanked (numbers, ids, the task's names) and a repeated list item (one
    per gate, say) kept once, so that one campaign's output has the same shape as another's."""
    words = []
    for token in line.split():
        core = token.strip("(),:;")
        value = (token.startswith("(") and token.endswith(")")) or core in own or re.search(r"[\d_-]", core)
        words.append(token.replace(core, "_") if value and core else token)
    items = re.split(r"(?<=,) ", " ".join(words))
    return " ".join(item for i, item in enumerate(items) if i == 0 or item != items[i - 1])


def test_the_readme_shows_what_arx_status_prints(campaign):
    """Every line of the README's example but table rows must keep its shape, in order, in the output."""
    cluster, _ = campaign
    example = readme_block("What you see", "").splitlines()
    assert example[0] == "$ .venv/bin/arx status"
    task = example[1].split()[1]
    expected = [shape(line, names(task)) for line in example[1:]
                if re.search("[a-z]", line) and not line.lstrip().startswith(("│", "..."))]
    output = cluster.command("status", timeout=60)
    shapes = iter(shape(line, names("tiny")) for line in output.splitlines())
    for line in expected:
        assert any(line == got for got in shapes), (line, output)
    assert len(expected) >= 9  # header, trials, baseline, gates, noise, two table titles and headers
