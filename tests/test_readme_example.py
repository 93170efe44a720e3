"""The README's examples, run verbatim: the example specialist joins a campaign and proposes, and the
"Many hosts" commands run a campaign on a 3-node cluster that loses a node."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from bus.connection import Bus
from cluster import ROOT, Cluster


def readme_block(section: str, language: str) -> str:
    """The first code block of a README section."""
    text = (ROOT / "README.md").read_text().split(f"## {section}\n", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", text, re.S).group(1)


def readme_specialist() -> str:
    return readme_block("Adding a specialist", "python")


def first_proposal_of(argv: list[str], env: dict, cwd) -> tuple[str, str]:
    """Start a campaign `doc`, run the agent `argv` until the lower-lr specialist's first proposal is in
    the log, and return that event's JSON and the agent's output."""
    cluster = Cluster(env, cwd / "logs")
    assert cluster.arx("campaign", "start", "--task", "digits-speedrun", "--campaign", "doc").returncode == 0
    agent = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async def first_proposal():
            async with await Bus.connect(role="admin") as bus:
                for _ in range(240):
                    async for batch in bus.read(subject="arx.ev.doc.trial.*.proposed"):
                        for msg in batch:
                            if "lower-lr" in msg.subject:
                                return msg
                    await asyncio.sleep(0.25)

        msg = asyncio.run(first_proposal())
    finally:
        agent.kill()
        output = agent.communicate()[0].decode(errors="replace")
    assert msg is not None, output[-2000:]
    return msg.data.decode(), output


def assert_lower_lr_on_the_baseline(event: str) -> None:
    assert '"specialist":"lower-lr"' in event and '"parent_id":"baseline"' in event
    assert "-LR = 0.01" in event and "+LR = 0.007" in event
    assert '"shown_ids":["baseline"]' in event


def assert_says_it_runs(output: str) -> None:
    """Its log's first line names the specialist, its policy and its surface: a user sees it is alive."""
    assert "arx.agent INFO lower-lr: running policy lower-lr on surface optimizer" in output, output[-2000:]


def test_readme_specialist_proposes_on_the_incumbent_and_logs(arx_env, tmp_path):
    script = tmp_path / "lower_lr.py"
    script.write_text(readme_specialist())
    event, output = first_proposal_of([sys.executable, str(script)], arx_env, tmp_path)
    assert_lower_lr_on_the_baseline(event)
    assert_says_it_runs(output)


def test_readme_specialist_runs_under_arx_agent_as_module_and_class(arx_env, tmp_path):
    """The README's `arx agent --policy lower_lr:LowerLR ...`, run by the console script from the folder
    that holds lower_lr.py: the class is found there, with no edit to the package."""
    (tmp_path / "lower_lr.py").write_text(readme_specialist())
    text = (ROOT / "README.md").read_text().split("## Adding a specialist\n", 1)[1]
    command = shlex.split(re.search(r"`(\.venv/bin/arx agent --policy lower_lr:LowerLR[^`]*)`", text).group(1))
    argv = [str(Path(sys.executable).with_name("arx")), *command[1:]]
    event, output = first_proposal_of(argv, arx_env, tmp_path)
    assert_lower_lr_on_the_baseline(event)
    assert_says_it_runs(output)


def test_a_policy_added_as_the_readme_says_is_an_arx_agent_choice(arx_env, tmp_path):
    """The README: the example class plus one line in POLICIES makes `arx agent --policy lower-lr` run it.
    The line goes into a copy of agents/registry.py that stands in for the edited file."""
    (tmp_path / "lower_lr.py").write_text(readme_specialist())
    registry = (ROOT / "agents" / "registry.py").read_text()
    assert "POLICIES = {\n" in registry
    edited = registry.replace("POLICIES = {\n", 'POLICIES = {\n    "lower-lr": "lower_lr:LowerLR",\n')
    launcher = (
        "import sys, types\n"
        "registry = types.ModuleType('agents.registry')\n"
        f"exec({edited!r}, registry.__dict__)\n"
        "sys.modules['agents.registry'] = registry\n"
        "import arx\n"
        "sys.exit(arx.main(sys.argv[1:]))\n"
    )
    argv = [sys.executable, "-c", launcher, "agent", "--policy", "lower-lr", "--specialist", "lower-lr",
            "--surface", "optimizer", "--campaign", "doc"]
    env = arx_env | {"PYTHONPATH": f"{tmp_path}:{ROOT}"}
    assert_lower_lr_on_the_baseline(first_proposal_of(argv, env, tmp_path)[0])


def test_readme_many_hosts_commands_finish_a_campaign_while_a_node_dies(tmp_path):
    demo = tmp_path / "demo"
    script = readme_block("Many hosts", "bash").replace("demo=/tmp/arx-demo", f"demo={demo}")
    run, stop = script.split("# Stop what each host started", 1)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ARX_", "NATS_"))}
    status_env = env | {"ARX_HOME": str(demo / "a"), "ARX_TLS_CA": str(demo / "a" / "tls" / "ca.pem"),
                        "NATS_URL": re.search(r"export NATS_URL=(\S+)", run).group(1)}
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", run], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # `arx watch` returns when the campaign stops; a trial that was running then still gets its outcome.
        deadline = time.monotonic() + 120
        while True:
            status = subprocess.run([sys.executable, str(ROOT / "arx.py"), "status", "--json"], env=status_env,
                                    capture_output=True, text=True, timeout=120)
            assert status.returncode == 0, status.stderr
            summary = json.loads(status.stdout)
            if summary["in_flight"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        exported = tmp_path / "events.jsonl"
        subprocess.run([sys.executable, str(ROOT / "arx.py"), "export", "--campaign", summary["campaign"],
                        str(exported)], env=status_env, check=True, capture_output=True, timeout=120)
    finally:
        subprocess.run(["bash", "-c", f"demo={demo}\n" + stop.split("\n", 1)[1]], cwd=ROOT, env=env,
                       capture_output=True, timeout=120)
    labels = summary["labels"]
    assert summary["stopped"] and summary["in_flight"] == 0, summary
    # The --trials budget exactly, though the README's roster has six specialists sharing it (trial slots).
    assert sum(labels.values()) - labels.get("harness_abort", 0) == 12, summary
    assert summary["skipped_events"] == {}
    # Host d's executors (their names carry the host) ran trials.
    host = socket.gethostname().split(".")[0]
    producers = {json.loads(line)["producer"] for line in exported.read_text().splitlines()}
    assert {f"executor-{host}-1", f"executor-{host}-2"} & producers, producers
