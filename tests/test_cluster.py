"""Many hosts: a campaign on a 3-node JetStream cluster that loses a node, and roles that share nothing
but NATS (each its own ARX_HOME and working directory, holding only its own credential)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import msgspec
import nkeys
import pytest

from bus import subjects
from bus.connection import Bus
from bus.events import TrialProposed, TrialStarted, decode
from bus.local import LocalCluster, LocalServer, free_port
from bus.server import Node
from bus.settings import Settings
from bus.tls import ensure_ca, ensure_node_cert
from cluster import ROOT, Cluster
from projection_events import dump

TASKS = str(ROOT / "tests" / "tasks")
TRIALS = 24


def role_env(base: Path, role: str, url: str, source_home: Path) -> tuple[dict, Path]:
    """The environment of a role on a host of its own: a fresh home and working directory holding only a
    copy of the role's own seed, and the install's tasks (the test tasks live in this checkout)."""
    host = base / f"host-{role}"
    (host / "work").mkdir(parents=True)
    seed = host / f"{role}.nk"
    shutil.copy(source_home / "credentials" / f"{role}.nk", seed)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ARX_", "NATS_"))}
    return env | {"NATS_URL": url, "ARX_HOME": str(host / ".arx"), "ARX_CREDENTIALS": str(seed),
                  "ARX_ACK_WAIT_S": "5", "ARX_TASKS_PATH": TASKS}, host / "work"


def scored(cluster: Cluster, campaign: str) -> int:
    return cluster.status(campaign)["trials_scored"]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


async def stream_leader(settings: Settings) -> str:
    async with await Bus.connect(settings, role="reader") as bus:
        return (await bus.js.stream_info(settings.stream)).cluster.leader


async def outcomes_and_runners(settings: Settings, campaign: str) -> tuple[dict[str, int], set[str]]:
    """How many outcomes each trial has in the stream, and which executors started runs."""
    counts: dict[str, int] = {}
    runners = set()
    async with await Bus.connect(settings, role="reader") as bus:
        async for batch in bus.read(subject=subjects.of_campaign(campaign)):
            for message in batch:
                event = decode(message.data)
                if isinstance(event, TrialStarted):
                    runners.add(event.producer)
                elif message.subject.endswith(".outcome"):
                    counts[event.trial_id] = counts.get(event.trial_id, 0) + 1
    return counts, runners


def test_a_campaign_on_three_nodes_survives_its_stream_leader_killed_and_restarted(tmp_path):
    home = tmp_path / "admin-home"
    nodes = LocalCluster(tmp_path / "nodes", home=home, size=3).start()
    admin_env = {key: value for key, value in os.environ.items() if not key.startswith(("ARX_", "NATS_"))}
    admin_env |= {"NATS_URL": nodes.url, "ARX_HOME": str(home), "ARX_TASKS_PATH": TASKS, "ARX_ACK_WAIT_S": "5"}
    admin = Cluster(admin_env, tmp_path / "logs")
    roles: list[Cluster] = [admin]
    try:
        for role, name, args in [
            ("evaluator", "evaluator", ("evaluator", "--name", "evaluator-1")),
            ("executor", "executor-1", ("executor", "--name", "executor-1")),
            ("reader", "projector", ("projector",)),
        ]:
            env, work = role_env(tmp_path / name, role, nodes.url, home)
            roles.append(Cluster(env, tmp_path / "logs", cwd=work))
            roles[-1].start(name, *args)
        env, work = role_env(tmp_path / "executor-2", "executor", nodes.url, home)
        roles.append(Cluster(env, tmp_path / "logs", cwd=work))
        roles[-1].start("executor-2", "executor", "--name", "executor-2")
        admin.command("campaign", "start", "--task", "tiny", "--trials", str(TRIALS), "--campaign", "c3")
        env, work = role_env(tmp_path / "agent", "agent", nodes.url, home)
        roles.append(Cluster(env, tmp_path / "logs", cwd=work))
        roles[-1].start("agent", "agent", "--specialist", "tpe-main", "--surface", "main", "--campaign", "c3",
                        "--max-in-flight", "2")

        wait_for(lambda: scored(admin, "c3") >= 3, 120, "three trials scored before the kill")
        leader = asyncio.run(stream_leader(nodes.settings))
        victim = next(server for server in nodes.servers if server.node.name == leader)
        victim.kill()  # SIGKILL, mid-campaign, the node that leads the stream
        before = scored(admin, "c3")
        wait_for(lambda: scored(admin, "c3") >= min(before + 3, TRIALS), 120, "trials scored with a node down")
        victim.start()
        summary = admin.wait_stopped("c3", timeout=240)
        failed = [name for role in roles for name in role.failed()]
        assert not failed, failed
        for role in roles:
            role.stop_all()
        # The budget counts scored and rejected trials; one the harness abandoned (a run lost with its
        # node) is replaced, so a failover may add a proposal, never an outcome to a trial.
        labels = summary["labels"]
        assert summary["in_flight"] == 0 and summary["skipped_events"] == {}, summary
        assert sum(labels.values()) - labels.get("harness_abort", 0) == TRIALS, summary

        # Exactly one outcome per trial, and the projector's view (which followed the log through the
        # failover) equals a fresh replay of the stream.
        counts, runners = asyncio.run(outcomes_and_runners(nodes.settings, "c3"))
        assert len(counts) == summary["trials_proposed"] and set(counts.values()) == {1}, counts
        assert runners == {"executor-1", "executor-2"}
        admin.command("replay", "--db", str(tmp_path / "replayed.db"))
    finally:
        for role in roles:
            role.stop_all()
        nodes.kill()
    projected = tmp_path / "projector" / "host-reader" / ".arx" / "lineage.db"
    assert dump(projected) == dump(tmp_path / "replayed.db")


def tls_server(tmp_path: Path) -> LocalServer:
    home = tmp_path / "home"
    cert, key = ensure_node_cert(home / "tls", "server", ["127.0.0.1"])
    node = Node(listen=f"127.0.0.1:{free_port()}", tls_cert=cert, tls_key=key, tls_ca=home / "tls" / "ca.pem")
    return LocalServer(tmp_path / "nats", home=home, node=node).start()


async def round_trip(settings: Settings) -> list[str]:
    """Publish a proposal as the agent and read the campaign back as a reader (the pull reader's own connection)."""
    async with await Bus.connect(settings, role="agent") as bus:
        await bus.publish(TrialProposed(campaign_id="tls", producer="t", trial_id="t1", specialist="s",
                                        surface="main", parent_id="baseline", hypothesis="h", diff=""))
    async with await Bus.connect(settings, role="reader") as bus:
        return [message.subject async for batch in bus.read(subject=subjects.of_campaign("tls")) for message in batch]


def test_tls_with_the_generated_ca_works_and_a_client_that_does_not_trust_it_is_refused(tmp_path):
    server = tls_server(tmp_path)
    try:
        assert server.url.startswith("tls://")
        tls_files = sorted((tmp_path / "home" / "tls").iterdir())
        assert [f.name for f in tls_files] == ["ca.key", "ca.pem", "server.key", "server.pem"]
        assert {oct(f.stat().st_mode & 0o777) for f in tls_files} == {"0o600"}

        assert asyncio.run(round_trip(server.settings)) == ["arx.ev.tls.trial.t1.proposed"]

        stranger_ca = ensure_ca(tmp_path / "stranger")
        untrusting = msgspec.structs.replace(server.settings, tls_ca=stranger_ca)
        with pytest.raises(RuntimeError, match="certificate verify failed"):
            asyncio.run(Bus.connect(untrusting, role="reader"))
        in_the_clear = msgspec.structs.replace(server.settings, tls_ca=None, nats_url=server.url.replace("tls:", "nats:"))
        with pytest.raises(RuntimeError, match="cannot connect"):
            asyncio.run(Bus.connect(in_the_clear, role="reader"))
    finally:
        server.kill()


def test_a_role_with_a_credential_the_servers_do_not_know_is_refused(nats_server, tmp_path):
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    settings = msgspec.structs.replace(nats_server.settings, credentials=stranger)
    with pytest.raises(RuntimeError, match="Authorization Violation"):
        asyncio.run(Bus.connect(settings, role="executor"))
