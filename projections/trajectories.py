"""Trajectories of other auto-research harnesses as arx campaigns, beside the seed release's format.

- autoresearch (karpathy/autoresearch): a results.tsv of `commit, <score>, memory_gb, status,
  description`, one row per experiment; the first row is the baseline; a kept experiment advances the
  branch, so each row builds on the latest kept one before it; status is keep, discard or crash (a
  crash logs the score 0).
- AIDE (WecoAI/aideml): a journal.json of nodes (plan, code, metric {value, maximize}, is_buggy,
  exc_type, analysis, ctime) and `node2parent`; a node without a parent is a draft. Every node carries
  its whole script, so each trial's diff is the script's change from its parent's (from nothing for a
  draft). AIDE keeps no verdicts: a working node that beats every earlier working one is `keep`, any
  other working one `discard`, a buggy one `crash` when its code raised and `unparsed` otherwise.

Each keeps the original status in its evidence. `detect_format` tells the three formats apart from the
file itself.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import difflib
import json
import re
from pathlib import Path

from bus.connection import Bus
from bus.events import Evidence
from projections.seedruns import (
    EPOCH,
    UNPARSED,
    Imported,
    Record,
    parse_number,
    campaign_events,
    direction_of,
    publish_events,
    run_name,
    tsv_events,
    write_events,
)

FORMATS = ("seed", "autoresearch", "aide")
AUTORESEARCH_COLUMNS = ("commit", "memory_gb", "status", "description")
AUTORESEARCH_STATUSES = ("keep", "discard", "crash")
SOLUTION = "solution.py"  # the one file an AIDE node's code is


def detect_format(path: Path) -> str:
    """seed, autoresearch or aide, from the file's own first line."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    if first.lstrip().startswith("{"):
        return "aide"
    header = first.rstrip("\r\n").split("\t")
    if "exp_id" in header:
        return "seed"
    if all(name in header for name in AUTORESEARCH_COLUMNS):
        return "autoresearch"
    raise ValueError(f"{path}: neither a seed-release results.tsv, an autoresearch results.tsv nor an AIDE "
                     "journal.json: give --format seed|autoresearch|aide")


def import_events(path: Path | str, campaign_id: str, *, fmt: str | None = None, metric: str | None = None,
                  direction: str | None = None, task: str | None = None):
    """The campaign's events from any of the three formats (the seed's Imported record)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "seed":
        return tsv_events(path, campaign_id, metric=metric, direction=direction, task=task)
    if fmt == "autoresearch":
        records, metric, columns = _autoresearch(path, metric)
        direction = direction or direction_of(records, None, metric, str(path))
    else:
        records, metric, direction, columns = _aide(path, metric, direction)
    unparsed = sum(r.label == UNPARSED for r in records)
    events = campaign_events(
        campaign_id, records, task=task or run_name(path), metric=metric, direction=direction, policy=fmt,
        spec={"imported": f"{fmt} {path.name}", "columns": columns},
        reason=f"imported from an {fmt} {path.name}: {len(records)} rows, {unparsed} unparsed",
    )
    return Imported(events, len(records), unparsed, 0)


def _autoresearch(path: Path, metric: str | None) -> tuple[list[Record], str, list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", strict=False))
    header, data = (rows or [[]])[0], [r for r in rows[1:] if any(f.strip() for f in r)]
    missing = [name for name in AUTORESEARCH_COLUMNS if name not in header]
    if missing or len(header) < 2:
        raise ValueError(f"{path}: not an autoresearch results.tsv, missing columns: {', '.join(missing) or 'the score'}")
    if not data:
        raise ValueError(f"{path}: a header but no rows")
    # The format's second column is the score it was judged on (val_bpb in the original).
    score = metric or header[1]
    if score not in header:
        raise ValueError(f"{path}: --metric {score} is not a column ({', '.join(header)})")
    records, parent = [], None
    for number, raw in enumerate(data):
        fields = dict(zip(header, raw))
        status = fields.get("status", "").strip()
        problems = [] if status in AUTORESEARCH_STATUSES else [f"unknown status {status!r}"]
        value = parse_number(score, fields.get(score, ""), problems)
        if status == "crash":
            value = None  # logged as 0 by the format
        elif status in ("keep", "discard") and value is None and not problems:
            problems.append(f"status {status} without a {score}")
        trial = f"r{number:04d}-{re.sub(r'[^A-Za-z0-9]', '', fields.get('commit', ''))[:12] or 'none'}"
        root = number == 0
        label = UNPARSED if problems else ("keep" if root else status)
        memory = parse_number("memory_gb", fields.get("memory_gb", ""), [])
        records.append(Record(
            trial_id=trial, time=_epoch(number), specialist="autoresearch", surface="train.py", parent_id=parent,
            hypothesis=fields.get("description", ""), label=label, score=None if problems else value,
            evidence=Evidence(stage="import", message="; ".join(problems) or f"autoresearch status: {status}"),
            metrics={"memory_gb": memory} if memory else {}, incumbent_id=None if root else parent, root=root,
            joins=not root,
        ))
        if label == "keep":
            parent = trial
    return records, score, header


def _aide(path: Path, metric: str | None, direction: str | None) -> tuple[list[Record], str, str, list[str]]:
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
        nodes = sorted(journal["nodes"], key=lambda n: (n.get("step") is None, n.get("step") or 0))
        parents = journal.get("node2parent", {})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not an AIDE journal ({type(exc).__name__}: {exc})") from None
    ids = {node.get("id"): f"n{i:04d}-{str(node.get('id', ''))[:8]}" for i, node in enumerate(nodes)}
    maximize = next((n["metric"]["maximize"] for n in nodes if isinstance(n.get("metric"), dict)
                     and n["metric"].get("maximize") is not None), None)
    direction = direction or (None if maximize is None else ("max" if maximize else "min"))
    if direction is None:  # the verdicts below need it
        raise ValueError(f"{path}: no node says whether its metric is maximized: give --direction min|max")
    code = {node.get("id"): node.get("code") or "" for node in nodes}
    records, best = [], None
    for i, node in enumerate(nodes):
        parent = parents.get(node.get("id"))
        value = node.get("metric", {}).get("value") if isinstance(node.get("metric"), dict) else None
        value = parse_number("metric", str(value), []) if value is not None else None
        buggy = bool(node.get("is_buggy")) or value is None
        if buggy:
            label = "crash" if node.get("exc_type") else UNPARSED
        elif best is None or (value > best if direction == "max" else value < best):
            label, best = "keep", value
        else:
            label = "discard"
        stage = "draft" if parent is None else "improve"
        before = code.get(parent, "") if parent else ""
        diff = "".join(difflib.unified_diff(before.splitlines(keepends=True), code[node.get("id")].splitlines(keepends=True),
                                            f"a/{SOLUTION}", f"b/{SOLUTION}"))
        original = f"aide: is_buggy={node.get('is_buggy')}, exc_type={node.get('exc_type')}"
        analysis = node.get("analysis") or ""
        records.append(Record(
            trial_id=ids[node.get("id")], time=_epoch(node.get("ctime")), specialist=f"aide-{stage}",
            surface=SOLUTION, parent_id=ids.get(parent), hypothesis=node.get("plan") or "", label=label,
            score=None if buggy else value, diff=diff,
            evidence=Evidence(stage="import", message=f"{original}\n{analysis}".strip()),
            metrics={"exec_time": node["exec_time"]} if isinstance(node.get("exec_time"), (int, float)) else {},
            root=i == 0, joins=i != 0,
        ))
    if not records:
        raise ValueError(f"{path}: an AIDE journal without nodes")
    return records, metric or "metric", direction, ["plan", "code", "metric", "is_buggy", "exc_type", "parent"]


def _epoch(seconds) -> str:
    """A time from seconds since 1970; an autoresearch row, which records none, gets its row number, so
    that two imports of one file are byte-identical and the rows keep their order."""
    if not isinstance(seconds, (int, float)):
        return EPOCH
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def cli_arguments(parser) -> None:
    parser.add_argument("tsv", help="a seed-release or autoresearch results.tsv, or an AIDE journal.json")
    parser.add_argument("--format", choices=["seed", "autoresearch", "aide"],
                        help="the file's format (default: told from the file itself)")
    parser.add_argument("--campaign", required=True, help="the campaign id to import it as")
    parser.add_argument("--to-file", help="write the events to this event file instead of publishing them")
    parser.add_argument("--metric", help="the score column (default: the one the file's best.json or baseline row names)")
    parser.add_argument("--direction", choices=["min", "max"],
                        help="whether a lower or a higher score is better (default: read from the kept trials)")
    parser.add_argument("--task", help="the task the campaign names (default: the run's folder)")


def cli(args) -> int:
    imported = import_events(args.tsv, args.campaign, fmt=args.format, metric=args.metric, direction=args.direction,
                             task=args.task)
    summary = (
        f"{args.campaign}: {imported.rows} rows ({imported.unparsed} unparsed, {imported.dropped} with a field"
        f" dropped) as {len(imported.events)} events"
    )
    if args.to_file:
        write_events(imported.events, args.to_file)
        print(f"{summary}, written to {args.to_file}")
        return 0

    async def publish():
        async with await Bus.connect(role="admin", name="arx-import-tsv") as bus:
            return await publish_events(bus, imported.events)

    report = asyncio.run(publish())
    print(f"{summary}; published {report.describe()}")
    return 0
