"""Who may write what, enforced by nats-server: each attack a plain nats-py client could make, made.

The attacker here is not one of our clients: it is nats-py used directly with a role's credential (or
none), leaving off whatever headers it likes. A refusal is "no ack and not in the stream" (PITFALLS).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats
import pytest
from cluster import Cluster
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError
from projection_events import campaign_started, finished, proposed, publish_all, scored

from bus import subjects
from bus.connection import Bus, Refused
from bus.events import CampaignStopped, TrialScored, encode
from bus.roles import ROLES

C = "c1"
REFUSED = (NatsTimeout, asyncio.TimeoutError, APIError)


async def plain_client(nats_server, arx_env, role: str | None) -> tuple[nats.NATS, list[str]]:
    """nats-py as any program would use it: a role's seed file (or none) and nothing else of arx."""
    errors: list[str] = []

    async def on_error(exc):
        errors.append(str(exc))

    seed = None if role is None else str(Path(arx_env["ARX_HOME"]) / "credentials" / f"{role}.nk")
    nc = await nats.connect(nats_server.url, nkeys_seed=seed, error_cb=on_error, allow_reconnect=False)
    return nc, errors


async def stored_subjects(bus: Bus) -> list[str]:
    return [m.subject for batch in [b async for b in bus.read()] for m in batch]


def forged_keep(trial: str) -> TrialScored:
    return scored(C, trial, "keep", 0.001, None)


@pytest.mark.parametrize("role", ["agent", "reader"])
def test_a_role_that_may_not_score_cannot_write_an_outcome(nats_server, arx_env, role):
    async def run():
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, [campaign_started(C), proposed(C, "t1", None)])
            nc, errors = await plain_client(nats_server, arx_env, role)
            js = nc.jetstream(timeout=0.5)
            forged = forged_keep("t1")
            with pytest.raises(REFUSED):
                await js.publish(forged.subject, encode(forged))
            await nc.close()
            return errors, await stored_subjects(bus)

    errors, stored = asyncio.run(run())
    assert subjects.trial(C, "t1", "outcome") not in stored
    assert any("permissions violation" in e.lower() and ".outcome" in e for e in errors)


def test_an_agent_cannot_forge_a_run_or_stop_a_campaign(nats_server, arx_env):
    forgeries = [finished(C, "t1"), CampaignStopped(campaign_id=C, reason="forged")]

    async def run():
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, [campaign_started(C), proposed(C, "t1", None)])
            nc, _ = await plain_client(nats_server, arx_env, "agent")
            js = nc.jetstream(timeout=0.5)
            for event in forgeries:
                with pytest.raises(REFUSED):
                    await js.publish(event.subject, encode(event))
            await nc.close()
            return await stored_subjects(bus)

    stored = asyncio.run(run())
    assert not set(stored) & {event.subject for event in forgeries}


@pytest.mark.parametrize("role", ["agent", "executor", "evaluator", "reader"])
def test_nobody_but_admin_deletes_the_log_its_queues_or_its_objects(nats_server, arx_env, role):
    async def run():
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, [campaign_started(C)])
            await bus.put_object("bundles/x", b"recipe")
            for queue in ("executors", "evaluators"):
                await bus.durable(queue, subjects.PROPOSALS)
            nc, _ = await plain_client(nats_server, arx_env, role)
            js = nc.jetstream(timeout=0.5)
            attacks = [
                js.delete_consumer(bus.settings.stream, "executors"),
                js.delete_consumer(bus.settings.stream, "evaluators"),
                js.delete_stream(bus.settings.stream),
                js.delete_object_store(bus.settings.object_bucket),
                js.purge_stream(bus.settings.stream),
            ]
            for attack in attacks:
                with pytest.raises(REFUSED):
                    await attack
            await nc.close()
            names = {c.name for c in await bus.js.consumers_info(bus.settings.stream)}
            return names, await stored_subjects(bus), (await (await bus.objects()).get("bundles/x")).data

    names, stored, data = asyncio.run(run())
    assert {"executors", "evaluators"} <= names and stored == [subjects.campaign(C, "started")] and data == b"recipe"


def test_a_second_outcome_never_enters_the_stream_whatever_the_headers(nats_server, arx_env):
    """The evaluator may write outcomes; even it cannot write a second one on a trial, header or not."""

    async def run():
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, [campaign_started(C), proposed(C, "t1", None), scored(C, "t1", "discard", 9.0, None)])
            nc, _ = await plain_client(nats_server, arx_env, "evaluator")
            js = nc.jetstream(timeout=0.5)
            forged = forged_keep("t1")
            with pytest.raises(APIError) as refusal:
                await js.publish(forged.subject, encode(forged), headers={"Nats-Msg-Id": "fresh-id"})
            await nc.close()
            stored = await bus.last_event(forged.subject)
            return refusal.value.err_code, stored, await stored_subjects(bus)

    err_code, stored, all_subjects = asyncio.run(run())
    assert err_code == 10077 and stored.label == "discard"
    assert all_subjects.count(subjects.trial(C, "t1", "outcome")) == 1


def test_a_client_without_credentials_cannot_connect(nats_server, arx_env):
    async def run():
        await plain_client(nats_server, arx_env, None)

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        asyncio.run(run())


def test_a_refused_publish_says_which_role_and_subject(arx_env, monkeypatch):
    monkeypatch.setenv("ARX_CREDENTIALS", str(Path(arx_env["ARX_HOME"]) / "credentials" / "agent.nk"))

    async def run():
        async with await Bus.connect(role="agent") as bus:
            await bus.publish(forged_keep("t1"))

    with pytest.raises(Refused, match=r"role 'agent' publishing to arx\.ev\.c1\.trial\.t1\.outcome"):
        asyncio.run(run())


def test_every_role_has_a_private_seed_file(nats_server, arx_env):
    folder = Path(arx_env["ARX_HOME"]) / "credentials"
    assert sorted(p.stem for p in folder.iterdir()) == sorted(ROLES)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}


def test_malformed_and_misfiled_proposals_are_never_folded_and_the_campaign_finishes(nats_server, arx_env, tmp_path):
    """An agent's key may publish proposals, so it may send bad ones: neither may wedge the campaign."""
    cluster = Cluster(arx_env, tmp_path / "logs")
    cluster.start("evaluator", "evaluator", "--name", "evaluator-1")
    cluster.start("executor", "executor", "--name", "executor-1")
    try:
        assert cluster.arx("campaign", "start", "--task", "tiny", "--trials", "3", "--campaign", C).returncode == 0
        bad_id = msgspec.json.decode(encode(proposed(C, "g", "baseline")))
        bad_id["trial_id"] = "g bad id"  # on a valid subject; the payload's id is no subject token
        elsewhere = proposed(C, "x", "baseline")  # a valid proposal on a subject that is not its own

        async def attack():
            nc, errors = await plain_client(nats_server, arx_env, "agent")
            js = nc.jetstream(timeout=5)
            await js.publish(subjects.trial(C, "g", "proposed"), msgspec.json.encode(bad_id))
            await js.publish(subjects.subject(C, "specialist", "x", "joined"), encode(elsewhere))
            await nc.close()
            return errors

        assert asyncio.run(attack()) == []  # the server took both: they are the agent's subjects
        cluster.start("agent", "agent", "--policy", "tpe", "--specialist", "tpe-main", "--surface", "main",
                      "--campaign", C)
        summary = cluster.wait_stopped(C, timeout=120)
    finally:
        cluster.stop_all()
    assert summary["trials_proposed"] == 3 and summary["in_flight"] == 0
    assert sum(summary["labels"].values()) == 3 and summary["skipped_events"] == {"misfiled": 2}


def test_two_campaigns_back_to_back_on_one_stream_both_finish(arx_env, tmp_path):
    """Each campaign's baseline is trial `baseline`: the same trial id, never the same event."""
    cluster = Cluster(arx_env, tmp_path / "logs")
    cluster.start("evaluator", "evaluator", "--name", "evaluator-1")
    cluster.start("executor", "executor", "--name", "executor-1")
    try:
        summaries = []
        for campaign in ("first", "second"):
            assert cluster.arx("campaign", "start", "--task", "tiny", "--trials", "1", "--campaign", campaign).returncode == 0
            summaries.append(cluster.wait_stopped(campaign, timeout=60))
    finally:
        cluster.stop_all()
    for summary in summaries:
        assert summary["trials_scored"] == 1 and summary["baseline_score"] is not None and summary["in_flight"] == 0


@pytest.mark.parametrize("create", [
    "$JS.API.CONSUMER.CREATE.{stream}",  # an unnamed create whose request names the queue
    "$JS.API.CONSUMER.CREATE.{stream}.evaluators",
    "$JS.API.CONSUMER.CREATE.{stream}.evaluators.arx.ev.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.{stream}.evaluators",
])
def test_no_role_may_redefine_another_roles_queue(nats_server, arx_env, create):
    """Creating a consumer under a queue's name replaces its filter: only the queue's own role may."""
    request = {"config": {"name": "evaluators", "durable_name": "evaluators", "filter_subject": "arx.ev.none",
                          "ack_policy": "explicit"}}

    async def run():
        async with await Bus.connect(role="admin") as bus:
            await bus.durable("evaluators", subjects.FINISHES)
            stream = bus.settings.stream
            for role in ("agent", "executor", "reader"):
                nc, _ = await plain_client(nats_server, arx_env, role)
                with pytest.raises(REFUSED):
                    await nc.request(create.format(stream=stream), msgspec.json.encode({"stream_name": stream, **request}),
                                     timeout=0.5)
                await nc.close()
            return (await bus.js.consumer_info(stream, "evaluators")).config.filter_subject

    assert asyncio.run(run()) == subjects.FINISHES
