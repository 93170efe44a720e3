"""`arx export`: a campaign's events to an event file (bus/eventfile.py), by default the latest
campaign's, found as `arx status` and `arx watch` find it; with --objects, the objects they point at
beside it (bus/objectfile.py), so the campaign moves to another log whole."""

from __future__ import annotations

import anyio

from bus.connection import Bus
from bus.eventfile import export_campaign
from bus.events import ObjectRef
from bus.objectfile import export_objects
from projections.status import latest_campaign


async def _export(campaign: str | None, path: str, objects: bool) -> tuple[str, int, int]:
    async with await Bus.connect(role="reader", name="arx-export") as bus:
        campaign = campaign or await latest_campaign(bus)
        if campaign is None:
            raise ValueError(f"no campaign has started in stream {bus.settings.stream}")
        refs: list[ObjectRef] = []
        count = await export_campaign(bus, campaign, path, refs=refs if objects else None)
        return campaign, count, await export_objects(bus, refs, path) if objects else 0


def cli_arguments(parser) -> None:
    parser.add_argument("--campaign", help="campaign id (default: the latest)")
    parser.add_argument("file", help="the event file to write")
    parser.add_argument("--objects", action="store_true",
                        help="also write every object the events point at (bundle, logs, artifacts) into FILE.objects/")


def cli(args) -> int:
    campaign, count, stored = anyio.run(_export, args.campaign, args.file, args.objects)
    objects = f" and {stored} objects to {args.file}.objects/" if args.objects else ""
    print(f"exported {count} events of {campaign} to {args.file}{objects}")
    return 0
