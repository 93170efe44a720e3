"""`arx audit --html DIR`: one self-contained page per lineage, plots embedded as base64 PNG. `arx ui`
serves the same sections as live pages, each trial linked to its row (projections/ui_report.py).

Per campaign: the score over trials with the best-so-far line and each trial coloured by its label,
the labels per specialist over time, and the lineage tree (the keep chain and its children); then the
audit's numbers and tables. Nothing on the page loads from anywhere else.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from projections import ledger
from projections.audit import Trial, load_trials, plural
from projections.views import COUNTED, change_text, gates_text
from projections.lineage import Lineage

LABEL_COLOURS = {
    "keep": "#2ca02c",
    "discard": "#9e9e9e",
    "within_noise": "#9ecae1",
    "crash": "#d62728",
    "preflight_crash": "#8c1c13",
    "invalid_edit": "#9467bd",
    "train_budget_overrun": "#ff7f0e",
    "eval_budget_overrun": "#e6b800",
    "size_blocked": "#8c564b",
    "disqualified": "#e377c2",
    "harness_abort": "#222222",
}
OTHER_COLOURS = ("#17becf", "#bcbd22", "#1f77b4", "#7f7f7f")
BEST_COLOUR = "#1f77b4"
# Points beyond these quantiles of the scores are drawn on the plot's edge, so one diverged run
# does not flatten the rest.
LOW_Q, HIGH_Q = 0.02, 0.98
PNG_METADATA = {"Software": None}  # no matplotlib version in the bytes: same page from the same log


def colours(labels: list[str]) -> dict[str, str]:
    """A fixed colour per known label, and the spare colours for others in sorted order."""
    others = sorted(set(labels) - set(LABEL_COLOURS))
    return {**LABEL_COLOURS, **{label: OTHER_COLOURS[i % len(OTHER_COLOURS)] for i, label in enumerate(others)}}


def measured(trials: list[Trial]) -> list[Trial]:
    """Trials with an outcome, in the order the outcomes were logged."""
    return sorted((t for t in trials if t.outcome_seq is not None), key=lambda t: t.outcome_seq)


def score_range(scores: list[float], must_show: list[float]) -> tuple[float, float]:
    ordered = sorted(scores)
    low = min([ordered[int(LOW_Q * (len(ordered) - 1))], *must_show])
    high = max([ordered[int(HIGH_Q * (len(ordered) - 1))], *must_show])
    margin = (high - low) * 0.06 or abs(high) * 0.01 or 1.0
    return low - margin, high + margin


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata=PNG_METADATA)
    return base64.b64encode(buffer.getvalue()).decode()


def _scatter_scores(ax, points: list[tuple[int, Trial]], palette: dict[str, str], limits) -> None:
    """Scores as dots; trials without a score as crosses on the bottom edge; clipped ones as triangles."""
    low, high = limits
    for label in sorted({t.label for _, t in points}):
        mine = [(x, t) for x, t in points if t.label == label]
        scores = [(x, t.score) for x, t in mine if t.score is not None]
        unscored = [x for x, t in mine if t.score is None]
        colour = palette[label]
        inside = [(x, s) for x, s in scores if low <= s <= high]
        if inside:
            ax.scatter(*zip(*inside), s=12, color=colour, label=f"{label} ({len(mine)})", zorder=3)
        for marker, edge, beyond in (("^", high, [x for x, s in scores if s > high]),
                                     ("v", low, [x for x, s in scores if s < low])):
            if beyond:
                ax.scatter(beyond, [edge] * len(beyond), s=18, marker=marker, color=colour, clip_on=False, zorder=3)
        if unscored:
            ax.scatter(unscored, [0.015] * len(unscored), s=14, marker="x", color=colour,
                       transform=ax.get_xaxis_transform(), clip_on=False, zorder=3,
                       label=None if inside else f"{label} ({len(mine)}, no score)")
    ax.set_ylim(low, high)


def score_plot(campaign: dict, trials: list[Trial], palette: dict[str, str]) -> str:
    done = measured(trials)
    points = list(enumerate(done))
    scores = [t.score for t in done if t.score is not None]
    figure = Figure(figsize=(11, 4.8))
    ax = figure.subplots()
    if scores:
        best_line, best = [], None
        better = min if campaign["direction"] == "min" else max
        for x, trial in points:
            if trial.label == "keep" and trial.score is not None:
                best = trial.score if best is None else better(best, trial.score)
            best_line.append(best)
        limits = score_range(scores, [s for s in best_line if s is not None])
        _scatter_scores(ax, points, palette, limits)
        ax.step(range(len(best_line)), best_line, where="post", color=BEST_COLOUR, lw=1.6, label="best so far",
                zorder=4)
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.set_xlabel("trial (in the order outcomes were logged)")
    ax.set_ylabel(f"{campaign['metric']} ({'lower' if campaign['direction'] == 'min' else 'higher'} is better)")
    ax.set_title("score over trials")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def specialist_plot(trials: list[Trial], palette: dict[str, str]) -> str:
    done = measured(trials)
    names = sorted({t.specialist for t in done})
    row = {name: i for i, name in enumerate(names)}
    figure = Figure(figsize=(11, 0.9 + 0.35 * max(len(names), 1)))
    ax = figure.subplots()
    for label in sorted({t.label for t in done}):
        xs = [x for x, t in enumerate(done) if t.label == label]
        ys = [row[t.specialist] for t in done if t.label == label]
        ax.scatter(xs, ys, marker="|", s=90, color=palette[label], label=label)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_xlabel("trial (in the order outcomes were logged)")
    ax.set_title("labels per specialist over time")
    if done:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    return _png(figure)


def tree_plot(campaign: dict, trials: list[Trial], chain: list[dict], palette: dict[str, str]) -> str:
    """The keep chain as a thick line through its trials, each chain trial's children fanning out."""
    done = measured(trials)
    x_of = {t.trial_id: x for x, t in enumerate(done)}
    by_id = {t.trial_id: t for t in done}
    on_chain = [step["trial"] for step in chain if step["trial"] in x_of]
    scores = [t.score for t in done if t.score is not None]
    figure = Figure(figsize=(11, 4.8))
    ax = figure.subplots()
    if scores and on_chain:
        limits = score_range(scores, [by_id[i].score for i in on_chain if by_id[i].score is not None])
        low, high = limits

        def y(trial: Trial) -> float:
            return low + 0.015 * (high - low) if trial.score is None else min(max(trial.score, low), high)

        chain_set = set(on_chain)
        children = [t for t in done if t.parent_id in chain_set and t.trial_id not in chain_set]
        for child in children:
            parent = by_id[child.parent_id]
            ax.plot([x_of[parent.trial_id], x_of[child.trial_id]], [y(parent), y(child)], color="#cccccc", lw=0.5,
                    zorder=1)
        for label in sorted({t.label for t in children}):
            mine = [t for t in children if t.label == label]
            ax.scatter([x_of[t.trial_id] for t in mine], [y(t) for t in mine], s=10, color=palette[label], zorder=2)
        # The line runs through the chain's scored trials; one without a score sits on the bottom edge.
        scored = [i for i in on_chain if by_id[i].score is not None]
        ax.plot([x_of[i] for i in scored], [y(by_id[i]) for i in scored], color=BEST_COLOUR, lw=2.2, marker="o",
                ms=5, zorder=3)
        unscored = [i for i in on_chain if by_id[i].score is None]
        ax.scatter([x_of[i] for i in unscored], [y(by_id[i]) for i in unscored], marker="o", s=30,
                   facecolors="none", edgecolors=BEST_COLOUR, zorder=3)
        for i in on_chain:
            ax.annotate(i, (x_of[i], y(by_id[i])), fontsize=6, xytext=(3, 4), textcoords="offset points")
        ax.set_ylim(limits)
        handles = [Line2D([], [], color=BEST_COLOUR, lw=2.2, marker="o", label="keep chain")]
        handles += [Line2D([], [], ls="", marker="o", color=palette[label], label=label)
                    for label in sorted({t.label for t in children})]
        ax.legend(handles=handles, fontsize=7, ncol=2, loc="upper right")
    ax.set_xlabel("trial (in the order outcomes were logged)")
    ax.set_ylabel(campaign["metric"])
    ax.set_title("lineage tree: the keep chain and the children of its trials")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def cost_plot(campaign: dict, points: list[list]) -> str:
    """The best kept score against what the campaign had spent: in dollars, or in device-hours while
    nothing is priced (ARX_DEVICE_PRICES, ARX_LLM_PRICES)."""
    priced = any(usd for usd, _, _ in points)
    spent = [usd if priced else hours for usd, hours, _ in points]
    figure = Figure(figsize=(11, 3.6))
    ax = figure.subplots()
    ax.step(spent, [best for _, _, best in points], where="post", color=BEST_COLOUR, lw=1.6)
    ax.set_xlabel("spent so far, dollars" if priced else "spent so far, device-hours (CPU core-hours + GPU-hours)")
    ax.set_ylabel(f"best {campaign['metric']}")
    ax.set_title("best score against cumulative cost")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def holdout_plot(campaign: dict, holdout: dict) -> str:
    """`arx audit --holdout`: each keep's delta vs its incumbent on validation (x) and held-out data (y).
    On the diagonal a keep generalized exactly; on the wrong side of 0 in y it no longer improves."""
    steps = [s for s in holdout["steps"] if s["validation_delta"] is not None and s["holdout_delta"] is not None]
    figure = Figure(figsize=(7, 5))
    ax = figure.subplots()
    ax.axhline(0, color="#999999", lw=0.8)
    ax.axvline(0, color="#999999", lw=0.8)
    if steps:
        xs, ys = [s["validation_delta"] for s in steps], [s["holdout_delta"] for s in steps]
        low, high = min(xs + ys + [0.0]), max(xs + ys + [0.0])
        ax.plot([low, high], [low, high], color=BEST_COLOUR, lw=0.8, ls="--", label="held-out = validation")
        for improves, colour, label in ((True, LABEL_COLOURS["keep"], "still improves"),
                                        (False, LABEL_COLOURS["crash"], "does not improve")):
            mine = [s for s in steps if s["improves"] is improves]
            ax.scatter([s["validation_delta"] for s in mine], [s["holdout_delta"] for s in mine], s=24, color=colour,
                       label=f"{label} ({len(mine)})", zorder=3)
        for s in steps:
            ax.annotate(s["trial"], (s["validation_delta"], s["holdout_delta"]), fontsize=6, xytext=(3, 4),
                        textcoords="offset points")
        ax.legend(fontsize=7, loc="best")
    better = "lower" if campaign["direction"] == "min" else "higher"
    rho = "-" if holdout["spearman"] is None else format(holdout["spearman"], ".3f")
    ax.set_xlabel(f"validation delta vs incumbent ({campaign['metric']}, {better} is better)")
    ax.set_ylabel("held-out delta vs the same incumbent")
    ax.set_title(f"keeps on held-out data: {holdout['improving']} of {holdout['keeps']} still improve;"
                 f" Spearman {rho} over {holdout['ranked']} trials", fontsize=10)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)


# -- page -----------------------------------------------------------------------------------------

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1150px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}img{max-width:100%}
.num{text-align:right}"""


def _e(value) -> str:
    if value is None:
        return "-"
    return html.escape(format(value, ".10g") if isinstance(value, float) else str(value))


class Linked(NamedTuple):
    text: str
    href: str


def _cell(value) -> str:
    if isinstance(value, Linked):
        return f'<a href="{html.escape(value.href)}">{_e(value.text)}</a>'
    return _e(value)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(data: str, alt: str) -> str:
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def campaign_section(name: str, a: dict, trials: list[Trial],
                     trial_href: Callable[[str], str] | None = None) -> str:
    """The campaign's plots and tables; with trial_href, each trial id links to trial_href(id)."""

    def trial(trial_id: str | None):
        return trial_id if trial_href is None or trial_id is None else Linked(trial_id, trial_href(trial_id))

    palette = colours([t.label for t in trials if t.label])
    campaign = {"metric": a["metric"], "direction": a["direction"]}
    labels = sorted(a["labels_with_baseline"])
    repairs = a["failure_repairs"]
    domain = a["domain"]
    parts = [
        f"<h2>{_e(name)}</h2>",
        f"<p>task {_e(a['task'])}, {_e(a['metric'])} ({_e(a['direction'])}), arm {_e(a['arm'])},"
        f" {'stopped' if a['stopped'] else 'running'}; {_e(plural(a['trials_with_baseline'], 'trial'))}"
        f" ({COUNTED}), {a['in_flight']} in flight</p>",
        f"<p>baseline <b>{_e(a['baseline_score'])}</b> ({_cell(trial(a['baseline_trial']))})"
        f" &rarr; best <b>{_e(a['best_score'])}</b>"
        f" ({_cell(trial(a['best_trial']))}),"
        f" change <b>{_e(change_text(a['improvement_pct'], a['direction']))}</b></p>",
        f"<p>incumbent gates: {_e(gates_text(a['best_gates']))}</p>",
        _img(score_plot(campaign, trials, palette), "score over trials"),
        _img(specialist_plot(trials, palette), "labels per specialist over time"),
        _img(tree_plot(campaign, trials, a["keep_chain"], palette), "lineage tree"),
        f"<h3>labels per specialist ({COUNTED}, as in the plots' legends)</h3>",
        _table(["specialist", "surface", "trials", *labels],
               [[s, v["surface"], v["trials"], *(v["labels"].get(label, 0) for label in labels)]
                for s, v in a["specialists"].items()]
               + [["all", "", a["trials_with_baseline"], *(a["labels_with_baseline"][label] for label in labels)]]),
        "<h3>keep chain</h3>",
        _table(["trial", "specialist", "label", "score", "delta vs parent", "hypothesis"],
               [[trial(s["trial"]), s["specialist"], s["label"], s["score"], s["delta"], s["hypothesis"]]
                for s in a["keep_chain"]]),
        f"<h3>failure-to-repair chains: {repairs['repaired']} of {plural(repairs['failures'], 'failure')} repaired</h3>",
        _table(["failed", "label", "repair", "label", "via", "path"],
               [[trial(c["failed"]), c["failed_label"], trial(c["repair"]), c["repair_label"], c["via"],
                 " > ".join(c["path"])] for c in repairs["chains"]]),
        "<h3>domain audit</h3>",
        f"<p>{_e(domain['note'])}</p>" if domain["note"] else
        f"<p>{len(domain['strayed'])} of {plural(domain['checked'], 'edit')} strayed</p>"
        + _table(["trial", "specialist", "surface", "problems"],
                 [[trial(s["trial"]), s["specialist"], s["surface"], "; ".join(s["problems"])]
                  for s in domain["strayed"]]),
    ]
    spent = a["cost"]["best_by_cost"]
    if any(usd or hours for usd, hours, _ in spent):  # an imported run records no cost
        parts += [f"<h3>cost: {_e(ledger.text(a['cost']['total']))}</h3>",
                  _img(cost_plot(campaign, spent), "best score against cumulative cost")]
    if "holdout" in a:  # `arx audit --holdout --html`
        skipped = a["holdout"].get("skipped")
        parts += ["<h3>held-out check</h3>", f"<p>skipped: {_e(skipped)}</p>" if skipped else
                  _img(holdout_plot(campaign, a["holdout"]), "keeps on held-out data")]
    return "\n".join(parts)


def page(title: str, body: str, head: str = "") -> str:
    """A whole HTML page: title, extra head elements, the report's style, body."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"{head}<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_html(lineage: Lineage, report: dict, out_dir: Path) -> Path:
    """Write out_dir/index.html for the audited campaigns; returns its path."""
    sections = [campaign_section(name, a, load_trials(lineage, name)) for name, a in report["campaigns"].items()]
    text = page("arx audit", "<h1>arx audit</h1>\n" + ("\n".join(sections) or "<p>no campaigns in the lineage</p>"))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    partial = out_dir / "index.html.partial"
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path
