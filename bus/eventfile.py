"""Event files: events as JSON lines, one per line, each line the exact bytes stored in the stream.

`arx export` writes a campaign's events in stream order (projections/export.py picks the campaign);
`arx import` publishes a file's events to a bus, idempotently; `iter_file` hands a file to a replay as
if it were the stream.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from bus import subjects
from bus.connection import Bus, StoredMessage
from bus.events import (
    UPCASTERS,
    CampaignStarted,
    Event,
    Misfiled,
    ObjectRef,
    NewerSchema,
    UnknownEvent,
    decode_stored,
)
from bus.objectfile import import_objects, refs_of

class ImportReport(msgspec.Struct, kw_only=True):
    """What an import did with each non-blank line; every line lands in exactly one count but upcast."""

    lines: int = 0
    published: int = 0
    already_present: int = 0  # its event id is already in the stream (an import run twice)
    duplicate: int = 0  # its event id appeared earlier in the same file
    conflict: int = 0  # a one-event subject holds another event, or its campaign's start conflicted
    corrupt: int = 0  # truncated, not JSON, wrong field types, or ids that cannot be subject tokens
    unknown_type: int = 0
    newer_schema: int = 0
    upcast: int = 0  # of the published: an older schema, stored as recorded and upcast when read

    def describe(self) -> str:
        counts = msgspec.structs.asdict(self)
        lines = counts.pop("lines")
        return f"{lines} lines: " + ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items())


BLOCK = 1 << 22  # bytes read at a time: a replay reads millions of lines


def read_line_blocks(path: Path | str) -> Iterator[list[tuple[int, bytes]]]:
    """(line number, bytes) of every non-blank line, a list per block of the file read; line ends
    (LF or CRLF) are cut off, and a truncated last line comes as it is."""
    with open(path, "rb") as handle:
        number, rest = 0, b""
        while block := handle.read(BLOCK):
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            yield [(n, data) for n, line in enumerate(lines, number + 1) if (data := line.rstrip(b"\r")).strip()]
            number += len(lines)
        if (data := rest.rstrip(b"\r")).strip():
            yield [(number + 1, data)]


def read_lines(path: Path | str) -> Iterator[tuple[int, bytes]]:
    """read_line_blocks, one line at a time."""
    for lines in read_line_blocks(path):
        yield from lines


def check_line(data: bytes) -> Event | str:
    """The event on one line, or the ImportReport count it falls in when it cannot be used."""
    try:
        event = decode_stored(None, data)  # a line's subject is the event's own: only its ids are checked
    except NewerSchema:
        return "newer_schema"
    except UnknownEvent:
        return "unknown_type"
    except (msgspec.DecodeError, Misfiled):
        return "corrupt"
    return event if event.event_id else "corrupt"


def iter_file(path: Path | str) -> Iterator[StoredMessage]:
    """The file as stream messages, seq = line number; a line that is no usable event is passed on
    all the same, so the reader's fold skips and counts it as it would from the stream."""
    for number, data in read_lines(path):
        yield StoredMessage(number, None, data)


# -- export ---------------------------------------------------------------------------------------


def exportable(msg: StoredMessage) -> tuple[bool, Event | None]:
    """Whether the message goes into an event file, and its event when it decodes. An event that is not
    on its own subject stays out: the fold never trusts it, and a file, which records no subjects, would
    pass it off as one that is. One that does not decode is kept as recorded: every reader skips it."""
    try:
        return True, decode_stored(msg.subject, msg.data)
    except Misfiled:
        return False, None
    except (msgspec.DecodeError, UnknownEvent):
        return True, None


async def export_campaign(bus: Bus, campaign_id: str, path: Path | str, *, refs: list[ObjectRef] | None = None) -> int:
    """Write every event of the campaign, in stream order, to path (atomically); returns how many.
    Events on a subject not their own are left out (the fold skips them too). Given a list, `refs`
    collects the objects the events point at, for bus/objectfile.py."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    count = 0
    with open(partial, "wb") as out:
        async for batch in bus.read(subject=subjects.of_campaign(campaign_id)):
            for msg in batch:
                keep, event = exportable(msg)
                if keep:
                    out.write(msg.data + b"\n")
                    count += 1
                    if refs is not None and event is not None:
                        refs += refs_of(event)
    if count == 0:
        partial.unlink()
        raise ValueError(f"campaign {campaign_id!r} has no events in stream {bus.settings.stream}")
    os.replace(partial, path)
    return count


# -- import ---------------------------------------------------------------------------------------


class _Head(msgspec.Struct):
    event_id: str = ""
    type: str = ""
    schema: int = 1


_head = msgspec.json.Decoder(_Head)


async def stored_event_ids(bus: Bus, campaign_id: str) -> set[str]:
    """Every event id the stream holds for a campaign: the duplicate window is only an hour long."""
    ids = set()
    async for batch in bus.read(subject=subjects.of_campaign(campaign_id)):
        for msg in batch:
            try:
                ids.add(_head.decode(msg.data).event_id)
            except msgspec.DecodeError:
                continue  # not ours to judge here; it cannot match a usable line anyway
    return ids


async def import_lines(bus: Bus, lines: Iterable[tuple[int, bytes]]) -> ImportReport:
    """Publish each usable line as recorded, with its event id as Nats-Msg-Id; count the rest.

    A campaign whose CampaignStarted conflicts with a different one already stored is another
    campaign under the same name: the rest of its events are refused, not merged into it.
    """
    report = ImportReport()
    seen: set[str] = set()
    stored: dict[str, set[str]] = {}
    refused: set[str] = set()
    for _, data in lines:
        report.lines += 1
        event = check_line(data)
        if isinstance(event, str):
            setattr(report, event, getattr(report, event) + 1)
            continue
        if event.event_id in seen:
            report.duplicate += 1
            continue
        seen.add(event.event_id)
        campaign = event.campaign_id
        if campaign not in stored:
            stored[campaign] = await stored_event_ids(bus, campaign)
        if event.event_id in stored[campaign]:
            report.already_present += 1
            continue
        if campaign in refused:
            report.conflict += 1
            continue
        if await bus.publish_bytes(event.subject, data, event.event_id):
            report.published += 1
            recorded = _head.decode(data)  # decode() upcast the event; the stored bytes keep their schema
            report.upcast += (recorded.type, recorded.schema) in UPCASTERS
        else:
            report.conflict += 1
            if isinstance(event, CampaignStarted):
                refused.add(campaign)
    return report


async def import_file(bus: Bus, path: Path | str) -> ImportReport:
    return await import_lines(bus, read_lines(path))


# -- cli ------------------------------------------------------------------------------------------


def cli_import_arguments(parser) -> None:
    parser.add_argument("file", help="an event file written by `arx export` or `arx import-tsv --to-file`")


def cli_import(args) -> int:
    async def run() -> tuple[ImportReport, int]:
        async with await Bus.connect(role="admin", name="arx-import") as bus:
            # The objects first (for a file exported with them), so that no event points at a missing one.
            stored = await import_objects(bus, args.file)
            return await import_file(bus, args.file), stored

    report, stored = asyncio.run(run())
    print(f"imported {args.file}: {report.describe()}" + (f"; {stored} objects" if stored else ""), flush=True)
    # An import run again (every event already present) did its job; a file with none of its events
    # in the stream afterwards, or with lines it could not read, did not.
    if report.corrupt:
        raise ValueError(f"{args.file}: {report.corrupt} corrupt line{'s' * (report.corrupt != 1)} skipped")
    if report.published + report.already_present == 0:
        raise ValueError(f"{args.file}: nothing imported")
    return 0
