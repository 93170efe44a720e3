"""`arx export`: a campaign's events to an event file (bus/eventfile.py), by default the latest
campaign's, found as `arx status` and `arx watch` find it."""

from __future__ import annotations

import anyio

from bus.connection import Bus
from bus.eventfile import export_campaign
from projections.status import _latest_campaign


async def _export(campaign: str | None, path: str) -> tuple[str, int]:
    async with await Bus.connect(role="reader", name="arx-export") as bus:
        campaign = campaign or await _latest_campaign(bus)
        if campaign is None:
            raise ValueError(f"no campaign has started in stream {bus.settings.stream}")
        return campaign, await export_campaign(bus, campaign, path)


def cli(args) -> int:
    campaign, count = anyio.run(_export, args.campaign, args.file)
    print(f"exported {count} events of {campaign} to {args.file}")
    return 0
