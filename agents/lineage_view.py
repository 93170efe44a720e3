"""The lineage view a specialist is shown in its prompt: bounded queries on the projection.

Every part has a row limit and every query an index, so the view has the same size and cost at 10
trials and at 100,000: the incumbent, the top kept trials, the chain from the baseline to the
incumbent, the incumbent's children, the most recent outcomes of all specialists, the trials still in
flight, this specialist's own recent failures with their evidence, and a saturation signal. The ids of
every row shown go into the TrialProposed that follows (`shown_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from projections import view_reads, views
from projections.lineage import Lineage
from projections.views import Trial

ARMS = ("lineage", "no-lineage")


@dataclass(frozen=True)
class ViewLimits:
    top: int = 5
    chain: int = 50  # steps walked up from the incumbent; a longer chain is cut with a note
    children: int = 8
    recent: int = 10
    in_flight: int = 5
    failures: int = 3
    failure_window: int = 200  # own most recent outcomes searched for failures
    saturation: int = 5  # own last scored trials that must all sit within the noise
    text_chars: int = 160  # a hypothesis or message is cut to this many characters
    log_chars: int = 600


@dataclass(frozen=True)
class Row:
    trial_id: str
    specialist: str | None
    label: str | None
    score: float | None
    delta: float | None
    hypothesis: str


@dataclass(frozen=True)
class Saturation:
    trials: int
    largest_move: float
    threshold: float


@dataclass(frozen=True)
class LineageView:
    campaign_id: str
    specialist: str
    arm: str
    metric: str
    direction: str
    noise: float
    incumbent: Row | None
    # False while no trial is kept: `incumbent` is then the baseline (the campaign's root trial).
    kept: bool
    limits: ViewLimits = ViewLimits()
    top: list[Row] = field(default_factory=list)
    chain: list[Row] = field(default_factory=list)  # root (or the cut) first; delta = step vs its parent
    chain_cut: bool = False
    children: list[Row] = field(default_factory=list)
    children_total: int = 0
    recent: list[Row] = field(default_factory=list)
    in_flight: list[Row] = field(default_factory=list)
    failures: list[view_reads.FailedTrial] = field(default_factory=list)
    saturation: Saturation | None = None

    @property
    def shown_ids(self) -> list[str]:
        """The trial ids of every row the rendered view shows, each once, in the order shown."""
        rows = [self.incumbent] if self.incumbent else []
        rows += [*self.top, *self.chain, *self.children, *self.recent, *self.in_flight]
        rows += [_row(f.trial) for f in self.failures]
        return list(dict.fromkeys(r.trial_id for r in rows))

    def render(self) -> str:
        """Markdown for a prompt."""
        return "\n".join(_render(self)) + "\n"


def build_view(
    lineage: Lineage, campaign_id: str, specialist: str, *, arm: str = "lineage", limits: ViewLimits = ViewLimits()
) -> LineageView:
    """What `specialist` is shown of the campaign now; arm "no-lineage" shows only the incumbent."""
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r} is not one of {ARMS}")
    camp = views.campaign(lineage, campaign_id)
    if camp is None:
        raise LookupError(f"campaign {campaign_id} is not in the lineage")
    q = _Queries(lineage, campaign_id, camp.direction, limits)
    top = q.top()
    incumbent = top[0] if top else q.root()
    view = dict(
        campaign_id=campaign_id,
        specialist=specialist,
        arm=arm,
        metric=camp.metric,
        direction=camp.direction,
        noise=camp.noise or 0.0,
        incumbent=incumbent,
        kept=bool(top),
        limits=limits,
    )
    if arm == "no-lineage" or incumbent is None:
        return LineageView(**view)
    chain, cut = q.chain(incumbent.trial_id)
    children, children_total = q.children(incumbent.trial_id)
    return LineageView(
        **view,
        top=top,
        chain=chain,
        chain_cut=cut,
        children=children,
        children_total=children_total,
        recent=q.recent(),
        in_flight=q.in_flight(),
        failures=q.failures(specialist),
        saturation=q.saturation(specialist, incumbent.score, view["noise"]),
    )


class _Queries:
    """The view's parts, each one bounded query of projections.view_reads or views."""

    def __init__(self, lineage: Lineage, campaign_id: str, direction: str, limits: ViewLimits):
        self.lineage = lineage
        self.c = campaign_id
        self.direction = direction
        self.limits = limits

    def top(self) -> list[Row]:
        # The same order as views.incumbent, so the first row is the incumbent every agent sees.
        return [_row(t) for t in views.kept(self.lineage, self.c, self.direction, self.limits.top)]

    def root(self) -> Row | None:
        root = views.root_trial(self.lineage, self.c)
        return _row(root) if root else None

    def chain(self, trial_id: str) -> tuple[list[Row], bool]:
        """Root first; each row's delta is its score minus its parent's. True when cut at the limit."""
        found = views.ancestors(self.lineage, self.c, trial_id, self.limits.chain)[::-1]
        cut = bool(found) and found[0].parent_id is not None
        rows = []
        for above, t in zip([None, *found], found):
            parent_score = above.score if above is not None else None
            step = t.score - parent_score if t.score is not None and parent_score is not None else None
            rows.append(replace(_row(t), delta=step))
        return rows, cut

    def children(self, trial_id: str) -> tuple[list[Row], int]:
        rows = [_row(t) for t in view_reads.children(self.lineage, self.c, trial_id, self.limits.children)]
        return rows, view_reads.children_count(self.lineage, self.c, trial_id)

    def recent(self) -> list[Row]:
        return [_row(t) for t in view_reads.recent_outcomes(self.lineage, self.c, self.limits.recent)]

    def in_flight(self) -> list[Row]:
        return [_row(t) for t in view_reads.pending(self.lineage, self.c, self.limits.in_flight)]

    def failures(self, specialist: str) -> list[view_reads.FailedTrial]:
        return view_reads.own_failures(self.lineage, self.c, specialist, self.limits.failure_window,
                                       self.limits.failures)

    def saturation(self, specialist: str, incumbent: float | None, noise: float) -> Saturation | None:
        """Set when this specialist's last scored trials all moved the score by no more than the noise."""
        if incumbent is None:
            return None
        m = self.limits.saturation
        deltas = view_reads.own_scored_deltas(self.lineage, self.c, specialist, self.limits.failure_window, m)
        threshold = noise * abs(incumbent)
        if len(deltas) < m or any(abs(d) > threshold for d in deltas):
            return None
        return Saturation(trials=m, largest_move=max(abs(d) for d in deltas), threshold=threshold)


def _row(t: Trial) -> Row:
    return Row(t.trial_id, t.specialist, t.label, t.score, t.delta, t.hypothesis or "")


# -- rendering ------------------------------------------------------------------------------


def _render(v: LineageView) -> list[str]:
    better, improves = ("lower", "<") if v.direction == "min" else ("higher", ">")
    lines = [f"## Lineage of campaign {v.campaign_id}", ""]
    inc = v.incumbent
    if v.arm == "no-lineage":
        lines.append(f"Incumbent: {inc.trial_id} ({v.metric} = {_num(inc.score)})" if inc else "Incumbent: none yet")
        return lines
    lines.append(
        f"Metric: {v.metric}, {better} is better; Δ is the change of the score (Δ {improves} 0 is an improvement);"
        f" relative noise {v.noise:g}."
    )
    if inc is None:
        lines.append("No trial is in the lineage yet.")
        return lines
    what = "Incumbent (the best kept trial)" if v.kept else "No trial is kept yet; the baseline"
    lines += [
        "",
        f"**{what}: {inc.trial_id}**, {v.metric} = {_num(inc.score)}, by {inc.specialist}: {_text(inc.hypothesis, v)}",
    ]
    if v.top:
        lines += ["", f"### Top {len(v.top)} kept trials", ""]
        lines += [_line(r, v) for r in v.top]
    if v.chain:
        lines += ["", f"### Path from the baseline to the incumbent ({len(v.chain)} trials; Δ against the parent)", ""]
        if v.chain_cut:
            lines.append(f"- (cut: only the last {len(v.chain)} trials of a longer chain are shown)")
        lines += [_line(r, v) for r in v.chain]
    lines += ["", f"### Children of the incumbent ({len(v.children)} newest of {v.children_total})", ""]
    lines += [_line(r, v) for r in v.children] or ["- none yet"]
    lines += ["", f"### Most recent outcomes of all specialists ({len(v.recent)})", ""]
    lines += [_line(r, v) for r in v.recent] or ["- none yet"]
    if v.in_flight:
        lines += ["", f"### In flight, not scored yet ({len(v.in_flight)} newest)", ""]
        lines += [_line(r, v) for r in v.in_flight]
    lines += ["", f"### Your recent failures ({v.specialist})", ""]
    for f in v.failures:
        lines += _failure(f, v)
    if not v.failures:
        lines.append("- none")
    if v.saturation:
        s = v.saturation
        lines += [
            "",
            "### Saturation",
            "",
            f"Your last {s.trials} scored trials all moved {v.metric} by at most {_num(s.largest_move)}, within the"
            f" noise ({_num(s.threshold)}): more of the same kind of change is unlikely to help; try a different idea.",
        ]
    return lines


def _line(r: Row, v: LineageView) -> str:
    facts = [r.specialist or "?", r.label or "in flight"]
    if r.score is not None:
        facts.append(f"{v.metric}={_num(r.score)}")
    if r.delta is not None:
        facts.append(f"Δ={r.delta:+.4g}")
    return f"- {r.trial_id} [{', '.join(facts)}] {_text(r.hypothesis, v)}"


def _failure(f: view_reads.FailedTrial, v: LineageView) -> list[str]:
    lines = [_line(_row(f.trial), v)]
    evidence = [f"stage {f.stage}"] if f.stage else []
    if f.gate:
        measured = f"measured {_num(f.measured)}" if f.measured is not None else "no measurement"
        limit = f" against the limit {_num(f.limit)}" if f.limit is not None else ""
        evidence.append(f"gate {f.gate}: {measured}{limit}")
    if f.frame:
        evidence.append(f"at {f.frame}")
    if evidence:
        lines.append(f"  - evidence: {'; '.join(evidence)}")
    if f.message:
        lines.append(f"  - message: {_text(f.message, v, v.limits.text_chars * 2)}")
    if f.log_tail:
        tail = f.log_tail[-v.limits.log_chars :].replace("```", "'''")
        lines += ["  - log tail:", "    ```", *[f"    {line}" for line in tail.splitlines()], "    ```"]
    return lines


def _text(text: str, v: LineageView, chars: int | None = None) -> str:
    """One line, cut to the limit."""
    chars = chars or v.limits.text_chars
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: chars - 1] + "…"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
