"""Fold a batch's statements in bulk, leaving exactly the rows that running them one by one, in log
order, would leave.

new_trials() folds, in memory, the statements of each trial that is new to the database into one
INSERT: SQLite would otherwise insert the row and rewrite the whole of it for each update. bulk_runs()
cuts the remaining statements into runs that execute as one executemany per statement kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import cache

from bus.events import Event
from projections.fold import (
    CAMPAIGN_STARTED,
    CAMPAIGN_STOPPED,
    OUTCOME_GATE,
    SPECIALIST_JOINED,
    TRIAL_FINISHED,
    TRIAL_OUTCOME,
    TRIAL_PROPOSED,
    TRIAL_PROPOSED_COLUMNS,
    TRIAL_STARTED,
    TRIAL_UPDATES,
    Statement,
)

# Statement kinds in the order a bulk run executes them: each row's own statements in the order its
# events are logged (a campaign starts before it stops; a trial is proposed, started, finished, then
# gets its outcome and that outcome's gates). Every statement here reads and writes only the row of
# its own event's aggregate (and a trial's gates): add a statement to PHASES only if that holds. A
# statement kind not listed runs on its own, between the runs before and after it, in log order.
PHASES = (
    CAMPAIGN_STARTED, SPECIALIST_JOINED, TRIAL_PROPOSED, TRIAL_STARTED, TRIAL_FINISHED, TRIAL_OUTCOME,
    OUTCOME_GATE, CAMPAIGN_STOPPED,
)
_PHASE = {sql: phase for phase, sql in enumerate(PHASES)}
# A start writes only started_at, executor and attempts and reads only attempts, which no finish,
# outcome or gate reads or writes: a redelivered start logged after those commutes with them.
_COMMUTES_WITH_LATER_PHASES = _PHASE[TRIAL_STARTED]
_UNKNOWN = -1

TrialKey = tuple[str, str]  # campaign_id, trial_id


Run = list[tuple[str, list[tuple]]]  # statements to execute in this order, each with its params per execution
Fold = tuple[Event, list[Statement]]


def bulk_runs(folds: Iterable[Fold]) -> Iterator[Run]:
    """Cut consecutive events' statements into runs that each execute as one executemany per kind.

    Executing a run kind by kind, in PHASES order, equals executing its statements in log order:
    statements on different rows commute, and on each row the phase order is the log order. An
    event that would run before a phase its row already reached in the run (a trial finished after
    its outcome, proposed after it started) starts a new run instead.
    """
    rows: dict[str, list[tuple]] = {sql: [] for sql in PHASES}
    reached: dict[tuple[str, str, str], int] = {}
    phase_of = _PHASE.get
    for event, stmts in folds:
        if not stmts:
            continue
        # An event's statements come in phase order (an outcome, then its gates).
        first, last = phase_of(stmts[0][0], _UNKNOWN), phase_of(stmts[-1][0], _UNKNOWN)
        if first == _UNKNOWN or last == _UNKNOWN or any(sql not in _PHASE for sql, _ in stmts[1:-1]):
            yield _run(rows)
            yield [(sql, [params]) for sql, params in stmts]
            rows, reached = {sql: [] for sql in PHASES}, {}
            continue
        row = (event.aggregate, event.campaign_id, event.aggregate_id)
        was = reached.get(row, -1)
        if first < was and first != _COMMUTES_WITH_LATER_PHASES:
            yield _run(rows)
            rows, reached, was = {sql: [] for sql in PHASES}, {}, -1
        for sql, params in stmts:
            rows[sql].append(params)
        if last > was:
            reached[row] = last
    yield _run(rows)


def _run(rows: dict[str, list[tuple]]) -> Run:
    return [(sql, params) for sql, params in rows.items() if params]


_UPDATES = {update.sql: update for update in TRIAL_UPDATES}


def new_trials(
    folds: list[Fold], existing: Callable[[list[TrialKey]], set[TrialKey]], defaults: dict
) -> tuple[Run, list[Fold]]:
    """The INSERT of each trial proposed in `folds` that has no row yet (`existing` says which have),
    of the row its statements leave, and the statements left for SQL (gates, and those of other rows).

    A new trial's row lives in memory until all of these are folded: it starts from its proposal
    and the schema's `defaults` for every column an update sets, and each update whose guard holds
    sets its columns, in log order; before its proposal a statement finds no row and does nothing.
    The INSERT goes first, so the gates, left to SQL, find the final row: its outcome_seq, set once,
    names the outcome that won, and a gate of any other outcome (one before the proposal included)
    matches it neither at its turn nor then. Every row names the same columns, so the rows go in in
    the order they were proposed, as one by one. A statement of a kind not in PHASES might touch
    these rows anywhere: with one of them in `folds`, everything is left to SQL.
    """
    proposed = []
    for _, stmts in folds:
        for sql, params in stmts:
            if sql == TRIAL_PROPOSED:
                proposed.append((params[0], params[1]))
            elif sql not in _PHASE:
                return [], folds
    new = set(proposed) - existing(proposed) if proposed else set()
    if not new:
        return [], folds
    rows: dict[TrialKey, dict] = {}
    rest = []
    for event, stmts in folds:
        left = []
        for sql, params in stmts:
            if sql == TRIAL_PROPOSED:
                key = (params[0], params[1])
                if key not in new:
                    left.append((sql, params))
                elif key not in rows:  # else proposed again: a no-op once the row is there
                    rows[key] = {**dict(zip(TRIAL_PROPOSED_COLUMNS, params)), **defaults}
                continue
            update = _UPDATES.get(sql)
            key = update.key(params) if update else None
            if key not in new:
                left.append((sql, params))
                continue
            row = rows.get(key)  # None before the proposal: no row, a no-op
            if row is not None and update.holds(row, params):
                row.update(zip(update.columns, params))
        if left:
            rest.append((event, left))
    inserts = [tuple(row.values()) for row in rows.values()]
    return [(_insert_trial(tuple(next(iter(rows.values())))), inserts)], rest


@cache
def _insert_trial(columns: tuple[str, ...]) -> str:
    return f"INSERT INTO trials ({', '.join(columns)}) VALUES ({','.join('?' * len(columns))})"
