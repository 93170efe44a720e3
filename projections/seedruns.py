"""`arx import-tsv`: a seed-release results.tsv (one row per trial) as arx events.

Per campaign: CampaignStarted (the score column and its direction read from the file itself, see
`score_column` and `direction_of`; no recipe bundle and no diffs were released), one SpecialistJoined per specialist, and CampaignStopped at the end, so
no agent mistakes an imported campaign for a running one. Per row: one TrialProposed (specialist,
parent_exp, hypothesis, expected_delta, domain as surface, an empty diff) and exactly one TrialScored
(status as label, the score, timings as metrics, notes as evidence, baseline_exp as incumbent). The
baseline row is the root trial, labelled keep.

A row whose outcome cannot be trusted (too few or too many columns, an empty or unknown status, a
score that is not a number, a bad or repeated exp_id, a bad parent or specialist) is kept as a trial
labelled `unparsed`, whose evidence message names every reason and carries all the row's fields: no
row is ever lost. A bad descriptive field (expected_delta, a timing, the timestamp, baseline_exp) is
left empty and named in the evidence; the row keeps its label.

Event ids and times come from the campaign name and the rows, so importing twice adds nothing and
two imports give byte-identical files. Not carried: job_name and snapshot_path, which point into
the release's own storage.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from bus.connection import Bus
from bus.eventfile import ImportReport, import_lines
from bus.events import (
    LABELS,
    CampaignStarted,
    CampaignStopped,
    Event,
    Evidence,
    ObjectRef,
    SpecialistJoined,
    TrialProposed,
    TrialScored,
    check_token,
    encode,
)

REQUIRED = ("exp_id", "timestamp", "specialist", "parent_exp", "domain", "hypothesis", "expected_delta", "status")
# Columns that describe a trial; every other column holds a measurement (the score, or a side metric).
DESCRIPTIVE = (*REQUIRED, "baseline_exp", "job_name", "snapshot_path", "notes")
# best.json's keys that describe the best trial rather than measure it.
BEST_DESCRIPTIVE = {"exp_id", "specialist", "domain", "hypothesis", "timestamp", "snapshot_path", "delta_vs_prev"}
BASELINE = "baseline"
UNPARSED = "unparsed"
PRODUCER = "arx-import-tsv"
POLICY = "seed-release"
SCORED_STATUSES = ("keep", "discard", "within_noise", BASELINE)
NO_BUNDLE = ObjectRef(name="not-recorded", size=0, sha256=hashlib.sha256(b"").hexdigest())
EPOCH = "1970-01-01T00:00:00.000000Z"
# The deepest frame the release appends to a crash's notes: "... (train_gpt.py:1401 in step_fn)".
_FRAME = re.compile(r"\(([^()\s]+:\d+ in [^()]+)\)\s*$")


class Layout(NamedTuple):
    columns: list[str]
    score: str

    @property
    def metrics(self) -> list[str]:
        """The side metrics: every measuring column but the score."""
        return [name for name in self.columns if name not in DESCRIPTIVE and name != self.score]


class Record(NamedTuple):
    """One trial of an imported trajectory, whatever format it came in: what its two events carry."""

    trial_id: str
    time: str
    specialist: str
    surface: str
    parent_id: str | None
    hypothesis: str
    label: str
    score: float | None
    evidence: Evidence
    metrics: dict[str, float] = {}
    diff: str = ""
    expected_delta: float | None = None
    incumbent_id: str | None = None
    root: bool = False  # the run's starting point (a seed release's baseline row)
    joins: bool = True  # its specialist is named by a SpecialistJoined


class Imported(NamedTuple):
    events: list[Event]
    rows: int
    unparsed: int  # rows kept as label `unparsed`
    dropped: int  # rows kept with their outcome but with a descriptive field left empty


def check_header(header: Sequence[str], source: str) -> None:
    """A clear error naming the columns a seed-release results.tsv must have and this one lacks."""
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise ValueError(f"{source}: not a seed-release results.tsv, missing columns: {', '.join(missing)}")


def score_column(header: Sequence[str], raw_rows: list[list[str]], best: dict | None, source: str) -> str:
    """The column the run was scored on, from the file itself: the one measurement its best.json
    records, else the first column after `status` that holds a number in the baseline row (the
    release writes the score there). Never guessed from the names of metrics we happen to know."""
    if best:
        named = [key for key in best if key in header and key not in DESCRIPTIVE and key not in BEST_DESCRIPTIVE]
        if len(named) == 1:
            return named[0]
    baseline = next((raw for raw in raw_rows if dict(zip(header, raw)).get("status", "").strip() == BASELINE), None)
    if baseline is not None:
        for name, value in list(zip(header, baseline))[list(header).index("status") + 1 :]:
            if name not in DESCRIPTIVE and parse_number(name, value, []) is not None:
                return name
    raise ValueError(f"{source}: cannot tell which column is the score (no best.json naming it, no baseline "
                     "row with a number after status): give --metric NAME")


def direction_of(records: list[Record], best_score: float | None, score: str, source: str) -> str:
    """min or max, from the run itself: a keep beats the incumbent, so the last kept score (or the
    score the run names as its best) lies on the better side of the starting point's."""
    baseline = next((r.score for r in records if r.root and r.score is not None), None)
    kept = [r.score for r in records if r.label == "keep" and not r.root and r.score is not None]
    better = best_score if best_score is not None else (kept[-1] if kept else None)
    if baseline is None or better is None or better == baseline:
        raise ValueError(f"{source}: cannot tell whether a lower or a higher {score} is better (no baseline, or "
                         "no kept trial that differs from it): give --direction min|max")
    return "min" if better < baseline else "max"


def read_best(tsv: Path) -> dict | None:
    """The release's best.json beside the results.tsv, if there is one that parses."""
    try:
        best = json.loads((tsv.parent / "best.json").read_text())
    except (OSError, ValueError):
        return None
    return best if isinstance(best, dict) else None


def run_name(tsv: Path) -> str:
    """The run the file belongs to, as the task an imported campaign names: its folder (above the
    release's `blackboard/`)."""
    folder = tsv.absolute().parent
    if folder.name == "blackboard":
        folder = folder.parent
    return re.sub(r"[^A-Za-z0-9_-]+", "-", folder.name).strip("-") or "imported"


def trial_id(text: str) -> str | None:
    """'exp_042' and '042' are the same trial 'exp_042'; '' is none. Raises ValueError for a bad id."""
    text = text.strip()
    number = text.removeprefix("exp_")
    return check_token("trial", f"exp_{number}") if number else None


def utc_time(text: str) -> str:
    """An ISO timestamp in the form events use; a timestamp without zone is read as UTC."""
    moment = dt.datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_number(name: str, text: str, problems: list[str]) -> float | None:
    """The field's number; None when it is empty, or when it is no finite number (named in problems)."""
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        problems.append(f"{name} {text!r} is not a number")
        return None
    return value


class _Row:
    """One data row read field by field.

    `problems` make the row `unparsed`: its columns, id, parent, specialist, status or score cannot be
    trusted. `dropped` lists fields that only describe the trial (a prediction, a timing, the time, the
    incumbent): each is left empty and named in the evidence, and the measured outcome stands.
    """

    def __init__(self, layout: Layout, raw: list[str], line: int, last_time: str):
        self.raw = raw
        self.line = line
        self.problems: list[str] = []
        self.dropped: list[str] = []
        columns = layout.columns
        if len(raw) < len(columns):
            self.problems.append(f"{len(raw)} of {len(columns)} columns (missing {', '.join(columns[len(raw):])})")
        elif len(raw) > len(columns):
            self.problems.append(f"{len(raw) - len(columns)} columns more than the header")
        self.fields = dict(zip(columns, raw))
        get = lambda name: self.fields.get(name, "")  # noqa: E731
        self.time = self._time(get("timestamp"), last_time)
        self.trial_id = self._id("exp_id", get("exp_id"), self.problems)
        if self.trial_id is None:
            if not get("exp_id").strip():
                self.problems.append("no exp_id")
            self.trial_id = f"row_{line}"
        self.parent_id = self._id("parent_exp", get("parent_exp"), self.problems)
        self.incumbent_id = self._id("baseline_exp", get("baseline_exp"), self.dropped)
        self.specialist = get("specialist")
        self.specialist_ok = self._token("specialist", self.specialist)
        self.status = get("status").strip()
        if not self.status:
            self.problems.append("empty status")
        elif self.status not in LABELS and self.status != BASELINE:
            self.problems.append(f"unknown status {self.status!r}")
        self.expected_delta = parse_number("expected_delta", get("expected_delta"), self.dropped)
        self.score = parse_number(layout.score, get(layout.score), self.problems)
        if self.status in SCORED_STATUSES and self.score is None and not self.problems:
            self.problems.append(f"status {self.status} without a {layout.score}")
        self.metrics = {
            name: value
            for name in layout.metrics
            if (value := parse_number(name, get(name), self.dropped)) is not None
        }

    def _token(self, column: str, text: str) -> bool:
        try:
            check_token(column, text)
            return True
        except ValueError as exc:
            self.problems.append(str(exc))
            return False

    @staticmethod
    def _id(column: str, text: str, problems: list[str]) -> str | None:
        try:
            return trial_id(text)
        except ValueError:
            problems.append(f"{column} {text!r} is not a trial id")
            return None

    def _time(self, text: str, last_time: str) -> str:
        try:
            return utc_time(text)
        except ValueError:
            self.dropped.append(f"timestamp {text!r} is not an ISO time")
            return last_time

    @property
    def label(self) -> str:
        if self.problems:
            return UNPARSED
        return "keep" if self.status == BASELINE else self.status

    def record(self) -> Record:
        parsed = self.label != UNPARSED
        return Record(
            trial_id=self.trial_id, time=self.time, specialist=self.specialist, surface=self.fields.get("domain", ""),
            parent_id=self.parent_id, hypothesis=self.fields.get("hypothesis", ""), label=self.label,
            score=self.score if parsed else None, evidence=self.evidence(), metrics=self.metrics,
            expected_delta=self.expected_delta,
            incumbent_id=self.incumbent_id if parsed and self.status != BASELINE else None,
            root=self.status == BASELINE, joins=self.status != BASELINE and self.specialist_ok,
        )

    def evidence(self) -> Evidence:
        if self.problems:
            reasons, fields = "; ".join(self.problems), "\t".join(self.raw)
            return Evidence(stage="import", message=f"unparsed row (line {self.line}: {reasons}): {fields}")
        notes = self.fields.get("notes", "")
        frame = _FRAME.search(notes)
        message = notes
        if self.dropped:
            message += ("\n" if notes else "") + f"import dropped: {'; '.join(self.dropped)}"
        return Evidence(stage="import", message=message, frame=frame.group(1) if frame else None)


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, fields) of each data row, as a standard TSV reader sees them."""
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", strict=False)
        try:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file, no header")
            check_header(header, str(path))
            rows = [(reader.line_num, raw) for raw in reader if any(field.strip() for field in raw)]
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    if not rows:
        raise ValueError(f"{path}: a header but no rows")
    return header, rows


def tsv_events(path: Path | str, campaign_id: str, *, metric: str | None = None, direction: str | None = None,
               task: str | None = None) -> Imported:
    """Every event of the imported campaign, in publishing order. `metric` and `direction` override
    what the file says; `task` names the task (default: the run's folder)."""
    check_token("campaign", campaign_id)
    path = Path(path)
    header, raw_rows = read_rows(path)
    best = read_best(path)
    if metric is not None and metric not in header:
        raise ValueError(f"{path}: --metric {metric} is not a column ({', '.join(header)})")
    layout = Layout(list(header), metric or score_column(header, [raw for _, raw in raw_rows], best, str(path)))
    start = next((t for _, raw in raw_rows if (t := _first_time(raw, layout))), EPOCH)
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    last_time = start
    for line, raw in raw_rows:
        row = _Row(layout, raw, line, last_time)
        if row.trial_id in seen:
            row.problems.append(f"exp_id repeats line {seen[row.trial_id]}")
            row.trial_id = f"{row.trial_id}-line{line}"
        seen.setdefault(row.trial_id, line)
        rows.append(row)
        last_time = row.time
    records = [row.record() for row in rows]
    if direction is None:
        best_score = parse_number(layout.score, str(best.get(layout.score, "")), []) if best else None
        direction = direction_of(records, best_score, layout.score, str(path))
    unparsed = sum(r.label == UNPARSED for r in records)
    events = campaign_events(
        campaign_id, records, task=task or run_name(path), metric=layout.score, direction=direction, policy=POLICY,
        spec={"imported": "seed-release results.tsv", "columns": layout.columns},
        reason=f"imported from a seed-release results.tsv: {len(rows)} rows, {unparsed} unparsed",
    )
    dropped = sum(bool(row.dropped) and row.label != UNPARSED for row in rows)
    return Imported(events, len(rows), unparsed, dropped)


def campaign_events(campaign_id: str, records: list[Record], *, task: str, metric: str, direction: str, policy: str,
                    spec: dict, reason: str) -> list[Event]:
    """An imported trajectory as a stopped campaign: CampaignStarted, one SpecialistJoined per specialist,
    one proposal and one outcome per record (in order), CampaignStopped."""
    start = records[0].time if records else EPOCH
    trials = sum(not r.root for r in records)
    started = CampaignStarted(
        campaign_id=campaign_id, occurred_at=start, producer=PRODUCER, task=task, metric=metric,
        direction=direction, max_trials=trials, bundle=NO_BUNDLE, spec=spec,
    )
    events: list[Event] = [started, *_joins(records, started, policy)]
    scores: dict[str, float] = {}
    for record in records:
        events.extend(_trial(record, started, scores, policy))
        if record.score is not None:
            scores[record.trial_id] = record.score
    events.append(
        CampaignStopped(
            campaign_id=campaign_id, occurred_at=records[-1].time if records else start, producer=PRODUCER,
            causation_id=started.event_id, trials=trials, reason=reason,
        )
    )
    return events


def _first_time(raw: list[str], layout: Layout) -> str | None:
    try:
        return utc_time(raw[layout.columns.index("timestamp")])
    except (ValueError, IndexError):
        return None


def _joins(records: list[Record], started: CampaignStarted, policy: str) -> list[SpecialistJoined]:
    """One join per specialist named by a trial, in order of first appearance."""
    surfaces: dict[str, str] = {}
    for record in records:
        if record.joins:
            surfaces.setdefault(record.specialist, record.surface)
    return [
        SpecialistJoined(
            campaign_id=started.campaign_id,
            occurred_at=started.occurred_at, producer=PRODUCER, causation_id=started.event_id,
            specialist=name, surface=surface, policy=policy,
        )
        for name, surface in surfaces.items()
    ]


def _trial(record: Record, started: CampaignStarted, scores: dict[str, float],
           policy: str) -> tuple[TrialProposed, TrialScored]:
    c = started.campaign_id
    proposed = TrialProposed(
        campaign_id=c, occurred_at=record.time, producer=PRODUCER,
        causation_id=started.event_id, trial_id=record.trial_id, specialist=record.specialist,
        surface=record.surface, parent_id=record.parent_id, hypothesis=record.hypothesis,
        diff=record.diff, expected_delta=record.expected_delta, policy=policy,
    )
    outcome = TrialScored(
        campaign_id=c, occurred_at=record.time, producer=PRODUCER,
        causation_id=proposed.event_id, trial_id=record.trial_id, label=record.label, evidence=record.evidence,
        score=record.score, metrics=record.metrics, incumbent_id=record.incumbent_id,
        incumbent_score=scores.get(record.incumbent_id) if record.incumbent_id else None,
    )
    return proposed, outcome


def write_events(events: list[Event], path: Path | str) -> None:
    """The events as an event file (see bus/eventfile.py), written atomically."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(b"".join(encode(event) + b"\n" for event in events))
    os.replace(partial, path)


async def publish_events(bus: Bus, events: list[Event]) -> ImportReport:
    return await import_lines(bus, ((number, encode(event)) for number, event in enumerate(events, 1)))
