"""The objects a campaign's events point at (the recipe bundle, every run's log and artifact), beside
its event file, so that a campaign moves between logs whole: `FILE.objects/` holds each object under
its sha256 and `manifest.jsonl` its name, size and hash; importing checks every byte against both.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import msgspec

from bus.connection import Bus
from bus.events import Event, ObjectRef

MANIFEST = "manifest.jsonl"


def objects_folder(event_file: Path | str) -> Path:
    return Path(f"{event_file}.objects")


def refs_of(event: Event) -> list[ObjectRef]:
    """The objects one event points at (its fields that are ObjectRefs)."""
    return [value for value in msgspec.structs.astuple(event) if isinstance(value, ObjectRef)]


async def export_objects(bus: Bus, refs: Iterable[ObjectRef], event_file: Path | str) -> int:
    """Write each object (once) into the event file's objects folder; returns how many."""
    folder = objects_folder(event_file)
    folder.mkdir(exist_ok=True)
    unique = list({ref.name: ref for ref in refs}.values())
    with open(folder / f"{MANIFEST}.partial", "wb") as manifest:
        for ref in unique:
            data = await bus.get_object(ref)  # checked against the ref's sha256 on the way
            (folder / ref.sha256).write_bytes(data)
            manifest.write(msgspec.json.encode(ref) + b"\n")
    os.replace(folder / f"{MANIFEST}.partial", folder / MANIFEST)
    return len(unique)


async def import_objects(bus: Bus, event_file: Path | str) -> int:
    """Put the objects exported beside an event file into the bus's object store (none if there is no
    objects folder); a file whose bytes are not the hash its manifest names is refused whole."""
    folder = objects_folder(event_file)
    if not (folder / MANIFEST).is_file():
        return 0
    try:
        refs = [msgspec.json.decode(line, type=ObjectRef) for line in (folder / MANIFEST).read_bytes().splitlines()
                if line]
    except msgspec.DecodeError as exc:
        raise ValueError(f"{folder / MANIFEST}: not a manifest of objects ({exc})") from None
    loaded = []
    for ref in refs:
        data = (folder / ref.sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != ref.sha256 or len(data) != ref.size:
            raise ValueError(f"{folder / ref.sha256}: not the object {ref.name} its manifest names (sha256 or size differs)")
        loaded.append((ref, data))
    for ref, data in loaded:
        await bus.put_object(ref.name, data)
    return len(loaded)
