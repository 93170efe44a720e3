"""Event files against a real nats-server: exact round trips, idempotent imports, bad lines counted."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from bus.connection import Bus
from bus import eventfile
from bus.eventfile import ImportReport, export_campaign, import_file, iter_file, read_lines
from bus.events import CampaignStarted, ObjectRef, TrialProposed, TrialScored, encode
from bus.settings import load_settings
from bus.local import LocalServer
from cluster import Cluster
from conftest import SEED_RUNS, needs_seed_runs
from projections.lineage import Lineage
from projections.seedruns import publish_events, tsv_events, write_events

ARM_OFF = SEED_RUNS / "pg_ablation_lineage_off" / "results.tsv"
ARM_ON = SEED_RUNS / "pg_ablation_lineage_on" / "results.tsv"
AT = "2026-01-01T00:00:00.000000Z"


async def stored(bus: Bus, subject: str = "arx.ev.>") -> list[tuple[str, bytes]]:
    return [(m.subject, m.data) async for batch in bus.read(subject=subject) for m in batch]


def started(campaign: str, event_id: str | None = None) -> CampaignStarted:
    return CampaignStarted(
        event_id=event_id or f"{campaign}-started", campaign_id=campaign, occurred_at=AT, task="tiny", metric="value",
        direction="min", max_trials=5, bundle=ObjectRef(name="b", size=0, sha256="0" * 64),
    )


def proposed(campaign: str, trial: str) -> TrialProposed:
    return TrialProposed(
        event_id=f"{campaign}-{trial}-proposed", campaign_id=campaign, trial_id=trial, specialist="s",
        surface="main", parent_id=None, hypothesis="h", diff="",
    )


def scored(campaign: str, trial: str, event_id: str, label: str) -> TrialScored:
    return TrialScored(event_id=event_id, campaign_id=campaign, trial_id=trial, label=label, score=1.0)


def counts(report: ImportReport) -> dict[str, int]:
    return {name: n for name, n in msgspec.structs.asdict(report).items() if n}


@needs_seed_runs
def test_export_import_round_trip_into_a_fresh_server(arx_env, tmp_path):
    arm_off = tsv_events(ARM_OFF, "arm-off").events
    arm_on = tsv_events(ARM_ON, "arm-on").events[:20]
    path = tmp_path / "arm-off.jsonl"
    (tmp_path / "nats-fresh").mkdir()
    fresh = LocalServer(tmp_path / "nats-fresh", home=tmp_path / "arx-home")  # the same credentials
    fresh.start()

    async def run():
        async with await Bus.connect(role="admin") as bus:
            # Another campaign's events before and after, so the export must filter and keep order.
            await publish_events(bus, arm_on[:10])
            await publish_events(bus, arm_off)
            await publish_events(bus, arm_on[10:])
            original = await stored(bus, "arx.ev.arm-off.>")
            exported = await export_campaign(bus, "arm-off", path)
        settings = msgspec.structs.replace(load_settings(), nats_url=fresh.url)
        async with await Bus.connect(settings, role="admin") as bus:
            first = await import_file(bus, path)
            copied = await stored(bus)
            second = await import_file(bus, path)
            return original, exported, first, copied, second, await bus.last_seq()

    try:
        original, exported, first, copied, second, last_seq = asyncio.run(run())
    finally:
        fresh.kill()
    assert exported == len(arm_off) == len(original)
    assert path.read_bytes().splitlines() == [data for _, data in original]
    assert copied == original
    assert counts(first) == {"lines": len(arm_off), "published": len(arm_off)}
    assert counts(second) == {"lines": len(arm_off), "already_present": len(arm_off)}
    assert last_seq == len(arm_off)


@needs_seed_runs
def test_import_adds_nothing_after_the_duplicate_window(arx_env, tmp_path, monkeypatch):
    """NATS forgets message ids after the duplicate window; the import must still add nothing."""
    monkeypatch.setenv("ARX_DUPLICATE_WINDOW_S", "1")
    path = tmp_path / "arm-off.jsonl"
    write_events(tsv_events(ARM_OFF, "arm-off").events, path)

    async def run():
        async with await Bus.connect(role="admin") as bus:
            first = await import_file(bus, path)
            before = await bus.last_seq()
            await asyncio.sleep(1.5)
            second = await import_file(bus, path)
            return first, before, second, await bus.last_seq()

    first, before, second, after = asyncio.run(run())
    assert first.published == before > 0
    assert second.published == 0 and second.already_present == first.published
    assert after == before


def test_bad_lines_are_skipped_and_counted_never_published(arx_env, tmp_path):
    c = "bad"
    good = [encode(started(c)), encode(proposed(c, "t1")), encode(scored(c, "t1", "bad-t1-outcome", "keep"))]
    newer = msgspec.json.decode(encode(proposed(c, "t2")))
    newer.update(schema=99, diff={"changed": "meaning"})
    not_a_token = encode(proposed(c, "t3")).replace(b'"campaign_id":"bad"', b'"campaign_id":"bad.x"')
    lines = [
        good[0],
        good[1],
        good[2][: len(good[2]) // 2],  # truncated
        b"not json at all",
        b'{"type":"TrialMeditated","event_id":"m1","campaign_id":"bad"}',
        msgspec.json.encode(newer),
        good[1],  # duplicate
        b"",
        not_a_token,
        good[2],
        encode(scored(c, "t1", "bad-t1-rival", "discard")),  # a second outcome for t1
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n" + good[0][:20])  # and a last line cut short

    async def run():
        async with await Bus.connect(role="admin") as bus:
            return await import_file(bus, path), await stored(bus)

    report, in_stream = asyncio.run(run())
    assert counts(report) == {
        "lines": 11, "published": 3, "duplicate": 1, "conflict": 1, "corrupt": 4, "unknown_type": 1, "newer_schema": 1,
    }
    assert [data for _, data in in_stream] == good

    # A replay from the same file folds the good events and skips what it cannot read, never misreading
    # the newer schema as the old one.
    messages = list(iter_file(path))
    assert [m.seq for m in messages] == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12]
    assert {m.subject for m in messages} == {None}
    lineage = Lineage()
    lineage.apply(messages)
    rows = lineage.query("SELECT trial_id, label FROM trials WHERE campaign_id = 'bad' ORDER BY trial_id")
    assert rows == [{"trial_id": "t1", "label": "keep"}]
    # two truncated and one not JSON; the id that is no subject token; an unknown type; a newer schema
    assert lineage.skipped() == {"corrupt": 3, "misfiled": 1, "unknown type": 1, "newer schema": 1}


def test_a_different_campaign_under_the_same_name_is_not_merged(arx_env, tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_bytes(encode(started("c1", "elsewhere-started")) + b"\n" + encode(proposed("c1", "t9")) + b"\n")

    async def run():
        async with await Bus.connect(role="admin") as bus:
            await bus.publish(started("c1"))
            return await import_file(bus, path), await stored(bus)

    report, in_stream = asyncio.run(run())
    assert counts(report) == {"lines": 2, "conflict": 2}
    assert [data for _, data in in_stream] == [encode(started("c1"))]


def test_export_of_an_unknown_campaign_is_a_clear_error(arx_env, tmp_path):
    async def run():
        async with await Bus.connect(role="admin") as bus:
            await export_campaign(bus, "nothing-here", tmp_path / "out.jsonl")

    with pytest.raises(ValueError, match="nothing-here.* has no events"):
        asyncio.run(run())
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("block", [1, 2, 3, 7, 1 << 22])
def test_lines_keep_their_numbers_whatever_blocks_the_file_is_read_in(tmp_path, monkeypatch, block):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a"}\r\n\n{"b"}\n   \n{"c"}\r\r\n{"truncat')
    monkeypatch.setattr(eventfile, "BLOCK", block)
    assert list(read_lines(path)) == [(1, b'{"a"}'), (3, b'{"b"}'), (5, b'{"c"}'), (6, b'{"truncat')]


def test_arx_import_fails_when_it_skipped_corrupt_lines_or_imported_nothing(arx_env, tmp_path):
    cluster = Cluster(arx_env, tmp_path / "logs")
    files = {
        "good": encode(started("cli")) + b"\n",
        "corrupt": b"not json\n" + encode(proposed("cli", "t1"))[:30] + b"\n",
        "mixed": encode(proposed("cli", "t2")) + b"\n{truncated\n",
        "unknown": b'{"type":"TrialMeditated","event_id":"m1","campaign_id":"cli"}\n',
    }
    done = {}
    for name, data in files.items():
        (tmp_path / f"{name}.jsonl").write_bytes(data)
        done[name] = cluster.arx("import", str(tmp_path / f"{name}.jsonl"))
    again = cluster.arx("import", str(tmp_path / "good.jsonl"))

    for name, lines, published, error in [
        ("good", 1, 1, ""), ("corrupt", 2, 0, "2 corrupt lines skipped"), ("mixed", 2, 1, "1 corrupt line skipped"),
        ("unknown", 1, 0, "nothing imported"),
    ]:
        result, path = done[name], tmp_path / f"{name}.jsonl"
        assert result.returncode == (1 if error else 0), (name, result.stderr)
        assert result.stdout.startswith(f"imported {path}: {lines} lines: {published} published"), name
        assert result.stderr == (f"arx import: {path}: {error}\n" if error else ""), name
    assert (again.returncode, again.stderr) == (0, "")  # imported before: every event already present
    assert "1 lines: 0 published, 1 already present" in again.stdout
