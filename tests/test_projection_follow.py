"""LiveLineage, the in-process view every role keeps, through a failure of the log under it."""

from __future__ import annotations

import anyio
from projection_events import campaign_events, publish_all

from bus.connection import Bus
from projections.follow import LiveLineage


def test_a_live_lineage_reads_on_after_losing_its_consumer(arx_env):
    events = campaign_events("c1", trials=12)
    half = len(events) // 2

    async def scenario() -> None:
        async with await Bus.connect(role="admin") as bus:
            live = LiveLineage(bus)
            async with anyio.create_task_group() as tg:
                tg.start_soon(live.run)
                await publish_all(bus, events[:half])
                assert await live.wait_for(half)
                for consumer in await bus.js.consumers_info(bus.settings.stream):  # as a server restart can
                    await bus.js.delete_consumer(bus.settings.stream, consumer.name)
                await publish_all(bus, events[half:])
                assert await live.wait_for(len(events), timeout=20)
                tg.cancel_scope.cancel()
            assert live.lineage.query("SELECT count(*) AS n FROM trials") == [{"n": 13}]

    anyio.run(scenario)
