"""Bus.read over its own pull connection: order, batches, large messages, filters that match nothing,
following, a consumer the server forgets, and credentials taken from NATS_URL."""

from __future__ import annotations

import asyncio
import time

import pytest
from projection_events import campaign_events, publish_all

from bus.connection import Bus
from bus.local import free_port
from bus.server import start_server, wait_reachable
from bus.pull_reader import PullError

C = "c1"


async def read_all(bus: Bus, **kwargs) -> list:
    return [msg async for batch in bus.read(**kwargs) for msg in batch]


def test_batches_come_in_stream_order_from_the_start_sequence(arx_env):
    events = campaign_events(C, trials=30)

    async def run():
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, events)
            batches = [batch async for batch in bus.read(start_seq=5, batch=7)]
            return batches, await read_all(bus, subject=f"arx.ev.{C}.trial.t1.>")

    batches, t1 = asyncio.run(run())
    assert [len(b) for b in batches[:-1]] == [7] * (len(batches) - 1) and 0 < len(batches[-1]) <= 7
    assert [m.seq for b in batches for m in b] == list(range(5, len(events) + 1))
    assert [m.subject.split(".")[5] for m in t1] == ["proposed", "started", "finished", "outcome"]


def test_reads_at_the_same_time_get_their_own_messages(arx_env):
    async def run():
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, campaign_events("a", trials=20) + campaign_events("b", trials=20))
            return await asyncio.gather(*(read_all(bus, subject=f"arx.ev.{c}.>", batch=5) for c in "abab"))

    a, b, a_again, b_again = asyncio.run(run())
    assert {m.subject.split(".")[2] for m in a} == {"a"} and {m.subject.split(".")[2] for m in b} == {"b"}
    assert a == a_again and b == b_again and len(a) == len(b) == len(campaign_events("a", trials=20))


def test_a_message_larger_than_a_socket_read_arrives_whole(arx_env):
    async def run():
        async with await Bus.connect(role="admin") as bus:
            await bus.js.publish("arx.ev.big.x.a.small", b"before")
            await bus.js.publish("arx.ev.big.x.a.large", b"x" * 3_000_000)
            await bus.js.publish("arx.ev.big.x.a.after", b"after")
            return await read_all(bus)

    messages = asyncio.run(run())
    assert [(m.seq, len(m.data)) for m in messages] == [(1, 6), (2, 3_000_000), (3, 5)]


def test_a_filter_that_matches_nothing_ends_at_once(arx_env):
    async def run():
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, campaign_events(C, trials=2))
            began = time.monotonic()
            found = await read_all(bus, subject="arx.ev.nothing-here.>")
            return found, time.monotonic() - began

    found, seconds = asyncio.run(run())
    assert found == [] and seconds < 2


def test_following_yields_new_events_and_raises_when_the_consumer_is_gone(arx_env):
    events = campaign_events(C, trials=2)

    async def run():
        async with await Bus.connect(role="admin") as bus:
            await publish_all(bus, events[:3])
            reader = bus.read(follow=True)
            assert [m.seq for m in await anext(reader)] == [1, 2, 3]
            await publish_all(bus, events[3:4])
            began = time.monotonic()
            assert [m.seq for m in await asyncio.wait_for(anext(reader), 5)] == [4]
            waited = time.monotonic() - began
            for consumer in await bus.js.consumers_info(bus.settings.stream):
                await bus.js.delete_consumer(bus.settings.stream, consumer.name)
            with pytest.raises(PullError, match="Consumer Deleted"):
                await asyncio.wait_for(anext(reader), 10)
            await reader.aclose()
            return waited

    assert asyncio.run(run()) < 1.0


def test_credentials_come_from_the_url_on_a_server_of_ones_own(tmp_path, monkeypatch):
    """A NATS server someone else runs, with a user and password rather than arx's nkeys."""
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{tmp_path / "store"}" }}\n'
                      'authorization {\n  user: arx\n  password: "s3cret"\n}\n')
    server = start_server(config, tmp_path / "nats.log")
    try:
        monkeypatch.setenv("NATS_URL", f"nats://arx:s3cret@127.0.0.1:{port}")
        monkeypatch.setenv("ARX_HOME", str(tmp_path / "home"))
        wait_reachable(f"nats://127.0.0.1:{port}")

        async def run():
            async with await Bus.connect(role="admin") as bus:
                await bus.provision()
                await publish_all(bus, campaign_events(C, trials=1))
                return await read_all(bus)

        assert len(asyncio.run(run())) == len(campaign_events(C, trials=1))
    finally:
        server.kill()
        server.wait()
