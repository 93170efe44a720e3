"""The README's command sections, run as written from the repository root against a real server: a
documented command or flag that stops working fails here."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shlex
import subprocess
import time

import arx
import pytest
from openai_server import ScriptedServer, answer
from test_readme_example import readme_block

from agents.edits import read_knob
from bus.connection import Bus
from cluster import ROOT, Cluster

README_URL = "http://127.0.0.1:8000/v1"


def run_block(section: str, env: dict, tmp_path) -> subprocess.CompletedProcess:
    """A README section's bash block under bash -eu, its temporary folders in tmp_path; fails on a failure."""
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block(section, "bash")], cwd=ROOT,
                          env=env | {"TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{section}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def made_folder(tmp_path, before: set) -> os.PathLike:
    """The one folder the block's mktemp -d made."""
    (folder,) = set(tmp_path.glob("tmp.*")) - before
    return folder


@pytest.fixture
def tiny_campaign(arx_env, tmp_path):
    """A finished 4-trial campaign of the tiny task, run by a real evaluator, executor and agent."""
    summary = Cluster(arx_env, tmp_path / "logs").run_tiny_campaign("tiny-doc")
    assert summary["trials_scored"] == 4, summary
    return summary


def test_audit_export_import_replay_and_import_tsv_as_the_readme_says(arx_env, tmp_path, tiny_campaign):
    audit = run_block("Auditing campaigns", arx_env, tmp_path)
    out = made_folder(tmp_path, set())
    assert "campaign tiny-doc: task tiny" in audit.stdout and "keep chain" in audit.stdout
    assert json.loads((out / "audit.json").read_text())["campaigns"]["tiny-doc"]["trials_with_baseline"] == 4
    assert "<img" in (out / "index.html").read_text()

    moved = run_block("Moving a campaign: export, import, replay", arx_env, tmp_path)
    out = made_folder(tmp_path, {out})
    events = (out / "events.jsonl").read_text().splitlines()
    assert f"exported {len(events)} events of tiny-doc to {out}/events.jsonl" in moved.stdout
    # The --db path is a link to the file the replay built, and the output says where the data went.
    built = (out / "lineage.db").resolve()
    assert (out / "lineage.db").is_symlink() and built.name.startswith("lineage.db.replay-")
    assert f"replayed {len(events)} events up to seq {len(events)} into {built} (linked from {out}/lineage.db)" \
        in moved.stdout
    assert "tiny-doc" in moved.stdout and "stopped" in moved.stdout  # arx status --db
    assert f"{len(events)} already present" in moved.stdout  # imported into the log it came from

    seeded = run_block("Importing a seed release: arx import-tsv", arx_env, tmp_path)
    assert "seed-demo: 4 rows (0 unparsed" in seeded.stdout
    assert "campaign seed-demo: task seed_release, val_bpb (min)" in seeded.stdout


def test_show_recipe_and_history_as_the_readme_says(arx_env, tmp_path, tiny_campaign):
    shown = run_block("One trial: `arx show`, `arx recipe`", arx_env, tmp_path)
    best = tiny_campaign["best_trial"]
    assert f"trial {best} (the incumbent) of campaign tiny-doc, task tiny" in shown.stdout
    # The incumbent's whole tree: its train.py sets the value the campaign kept, the data beside it.
    recipe = made_folder(tmp_path, set()) / "best"
    assert read_knob((recipe / "train.py").read_text(), "VALUE") == pytest.approx(tiny_campaign["best_score"])
    assert (recipe / "data").is_dir()
    assert "log --notes incumbent" in shown.stdout  # what arx history says to run


def test_the_llm_specialist_and_campaign_stop_as_the_readme_says(arx_env, tmp_path):
    """The LLM block with the README's endpoint swapped for a scripted one, on a digits-speedrun campaign
    that the stop block then stops: the agent exits 0 and its trial records the model and its cost."""
    cluster = Cluster(arx_env, tmp_path / "logs")
    cluster.command("campaign", "start", "--task", "digits-speedrun", "--campaign", "llm-doc")
    block = readme_block("The LLM specialist", "bash")
    assert README_URL in block
    with ScriptedServer() as llm:
        edit = {"path": "train.py", "search": "LR = 0.01", "replace": "LR = 0.005"}
        llm.push(answer(hypothesis="halve LR", expected_delta=None, edits=[edit], diff=""))
        agent = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block.replace(README_URL, llm.base_url)],
                                 cwd=ROOT, env=arx_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            proposed = asyncio.run(first_event("llm-doc", "proposed", "llm-optimizer"))
            stopped = run_block("Stopping a campaign", arx_env, tmp_path)
            output = agent.communicate(timeout=60)[0]
        finally:
            agent.kill()
    assert agent.returncode == 0, output[-3000:]
    assert "stopped llm-doc" in stopped.stdout
    assert proposed["model"] == "qwen2.5-coder" and "+LR = 0.005" in proposed["diff"]
    # ARX_LLM_PRICES: 100 prompt and 20 completion tokens at $0.2 and $0.6 per million.
    assert proposed["cost_usd"] == pytest.approx((100 * 0.2 + 20 * 0.6) / 1e6)
    summary = cluster.status("llm-doc")
    assert summary["stopped"], summary
    assert "enough for today" in json.dumps(asyncio.run(first_event("llm-doc", "stopped", "llm-doc")))


async def first_event(campaign: str, verb: str, name: str, timeout: float = 60) -> dict:
    """The first event on a subject of the campaign that ends in `verb` and names `name`."""
    deadline = time.monotonic() + timeout
    async with await Bus.connect(role="admin") as bus:
        while time.monotonic() < deadline:
            async for batch in bus.read(subject=f"arx.ev.{campaign}.>"):
                for msg in batch:
                    if msg.subject.endswith(f".{verb}") and name in msg.subject:
                        return json.loads(msg.data)
            await asyncio.sleep(0.25)
    raise TimeoutError(f"no {verb} event of {name} in {campaign} within {timeout:.0f}s")


def test_up_sh_usage_names_every_flag_it_takes():
    """scripts/up.sh: every flag of its case statement is in the usage it prints and in its header comment."""
    script = (ROOT / "scripts" / "up.sh").read_text()
    flags = {flag for pattern in re.findall(r"^\s+(-[-\w|]+)\)", script, re.M) for flag in pattern.split("|")}
    assert {"--task", "--join", "--measure-noise", "--detach", "--help"} <= flags, flags
    done = subprocess.run([str(ROOT / "scripts" / "up.sh"), "--help"], capture_output=True, text=True, timeout=30)
    header = script.split("set -euo pipefail", 1)[0]
    for flag in flags:
        assert re.search(rf"{flag}\b", done.stderr), f"{flag} is not in up.sh's usage: {done.stderr}"
        assert re.search(rf"{flag}\b", header), f"{flag} is not in up.sh's header comment"


def readme_arx_commands() -> list[list[str]]:
    """Every `arx` command line of the README's bash blocks (continuations joined, comments cut), as argv."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    commands = []
    for line in lines:
        if "bin/arx " in line and "$(" not in line.split("bin/arx ", 1)[1]:
            words = shlex.split(line.split("bin/arx ", 1)[1], comments=True)
            commands.append(list(itertools.takewhile(lambda word: word not in ("|", ">", ";", "&&"), words)))
    return commands


@pytest.mark.parametrize("argv", readme_arx_commands(), ids=" ".join)
def test_every_arx_command_in_the_readme_parses_with_its_flags(argv):
    """A command or flag the README shows but `arx` no longer takes fails here, each line on its own."""
    assert arx.build_parser(argv[0]).parse_args(argv).command == argv[0]


def test_the_readme_shows_the_commands_people_run_first():
    shown = {argv[0] for argv in readme_arx_commands()}
    assert {"status", "audit", "export", "import", "replay", "campaign", "agent", "show", "recipe"} <= shown, shown
