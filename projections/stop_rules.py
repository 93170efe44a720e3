"""Stop rules against runaway loops: a campaign stops itself on a plateau, a failure storm or a deadline.

Each rule is declared when the campaign starts (CampaignStarted.stop_rules) and judged on the labels of
the campaign's outcomes, newest first (the baseline left out), by pure functions: the evaluator stops
the campaign on them, `arx status` shows how close it is to each:
- plateau K: the last K counted outcomes (scored or rejected) hold no keep;
- failure storm F/K: more than F% of the last K outcomes ended in harness_abort, or in one and the
  same failure label (a recipe that crashes every time, a gate every trial misses);
- deadline: the campaign has run this long since it started.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from typing import NamedTuple

from bus.events import FAILURE_LABELS, StopRules
from projections import reads, views
from projections.lineage import Lineage
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '45m', '12h', '2d' -> seconds."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--deadline {text!r}: give a positive duration such as 90s, 45m, 12h or 2d")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def parse_storm(text: str) -> tuple[float, int]:
    """'80/10' -> (80.0, 10): more than 80% of the last 10 outcomes."""
    percent, _, window = text.partition("/")
    try:
        value, count = float(percent), int(window)
    except ValueError:
        value, count = -1.0, 0
    if not 0 <= value < 100 or count < 1:
        raise ValueError(f"--failure-storm {text!r}: give PERCENT/TRIALS such as 80/10 (0 <= PERCENT < 100)")
    return value, count


def rules_from(plateau: int | None, storm: str | None, deadline: str | None) -> StopRules:
    """The rules a command line declares."""
    if plateau is not None and plateau < 1:
        raise ValueError(f"--plateau {plateau}: give a number of trials, at least 1")
    percent, window = parse_storm(storm) if storm else (None, None)
    return StopRules(plateau=plateau, storm_percent=percent, storm_window=window,
                     deadline_s=parse_duration(deadline) if deadline else None)


def elapsed_s(started_at: str | None, until: str | None = None) -> float:
    """Seconds from the campaign's start to `until` (its stop) or to now, from the lineage's ISO times;
    0 when the start is unknown."""
    if not started_at:
        return 0.0
    end = _moment(until) if until else dt.datetime.now(dt.timezone.utc)
    return (end - _moment(started_at)).total_seconds()


def _moment(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


class Recent(NamedTuple):
    """What the rules judge: the last counted outcomes' labels (for the plateau: scored or rejected), the
    last outcomes' labels of any kind (for the storm, which harness faults make too), newest first, and
    the campaign's age."""

    counted: list[str]
    labels: list[str]
    elapsed_s: float


def recent(lineage: Lineage, camp: views.Campaign) -> Recent:
    """What the campaign's stop rules need of its lineage, and no more."""
    rules, c = camp.stop_rules, camp.campaign_id
    return Recent(
        reads.latest_labels(lineage, c, rules.plateau, counted=True) if rules.plateau else [],
        reads.latest_labels(lineage, c, rules.storm_window) if rules.storm_window else [],
        elapsed_s(camp.started_at, until=camp.stopped_at),
    )


def _storm(rules: StopRules, labels: list[str]) -> tuple[int, str | None]:
    """The largest count of one kind of failure among the window's outcomes, and that kind."""
    failures = Counter(label for label in labels[: rules.storm_window] if label in FAILURE_LABELS)
    if not failures:
        return 0, None
    label, count = failures.most_common(1)[0]
    return count, label


def stop_reason(rules: StopRules, recent: Recent) -> str | None:
    """Why the campaign must stop now, or None."""
    if rules.plateau and len(recent.counted) >= rules.plateau and "keep" not in recent.counted[: rules.plateau]:
        return f"plateau: no keep in the last {rules.plateau} trials"
    if rules.storm_window and len(recent.labels) >= rules.storm_window:
        count, label = _storm(rules, recent.labels)
        if count * 100 > rules.storm_percent * rules.storm_window:
            return f"failure storm: {count} of the last {rules.storm_window} trials ended in {label}"
    if rules.deadline_s and recent.elapsed_s >= rules.deadline_s:
        return f"deadline: {recent.elapsed_s:.0f}s since the campaign started (limit {rules.deadline_s:.0f}s)"
    return None


def progress(rules: StopRules, recent: Recent) -> list[dict]:
    """How close the campaign is to each declared rule: its limit and where it stands."""
    rows = []
    if rules.plateau:
        since_keep = next((i for i, label in enumerate(recent.counted) if label == "keep"), len(recent.counted))
        rows.append({"rule": "plateau", "limit": rules.plateau, "now": since_keep,
                     "says": f"{since_keep} trials since the last keep, stops at {rules.plateau}"})
    if rules.storm_window:
        count, label = _storm(rules, recent.labels)
        seen = min(len(recent.labels), rules.storm_window)
        rows.append({"rule": "failure_storm", "limit": f"{rules.storm_percent:g}% of {rules.storm_window}",
                     "now": count, "says": f"{count} of the last {seen} ended in {label or 'one failure label'},"
                     f" stops above {rules.storm_percent:g}% of {rules.storm_window}"})
    if rules.deadline_s:
        rows.append({"rule": "deadline", "limit": rules.deadline_s, "now": round(recent.elapsed_s, 1),
                     "says": f"{recent.elapsed_s:.0f}s of {rules.deadline_s:.0f}s"})
    return rows
