"""What a campaign has cost, and how much of its budgets is left.

Each trial's row carries its ledger (projections/fold.py adds it up from the events): the CPU
core-seconds and GPU-seconds of all its runs (preflight checks, rivals and confirmation reruns
included), the evaluators' scoring seconds (CPU), and its proposal's LLM tokens and dollars. LLM
calls that led to no proposal are on the campaign's row. Dollars for devices come from the prices
the campaign recorded when it started (`ARX_DEVICE_PRICES`, default 0).
"""

from __future__ import annotations

import msgspec

from bus.events import DEVICE_KINDS, Budgets, Prices
from projections.lineage import Lineage
from projections.views import Campaign, in_flight

HOUR_S = 3600.0

# One trial's ledger as columns of `trials`; the CPU side counts the evaluators' scoring too.
_COLUMNS = ("sum(device_cpu_s + eval_s)", "sum(device_cuda_s)", "sum(tokens_in + tokens_out)", "sum(cost_usd)")
_SUMS = ", ".join(f"coalesce({c}, 0)" for c in _COLUMNS)  # what _ledger takes, of a set of trials


class Ledger(msgspec.Struct, frozen=True):
    device_s: dict[str, float]  # by kind: "cpu" (core-seconds), "cuda" (GPU-seconds)
    llm_tokens: int
    llm_usd: float
    compute_usd: float
    total_usd: float


def budgets_from(usd: float | None, device_hours: list[str]) -> Budgets:
    """The budgets a command line declares: --budget-usd D and --budget-device-hours KIND=H (repeatable)."""
    if usd is not None and not usd > 0:
        raise ValueError(f"--budget-usd {usd:g}: give a number of dollars above 0")
    hours = {}
    for item in device_hours:
        kind, _, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = None
        if kind not in DEVICE_KINDS or value is None or not value > 0:
            raise ValueError(f"--budget-device-hours {item}: give KIND=HOURS, KIND one of {', '.join(DEVICE_KINDS)},"
                             " HOURS above 0")
        if kind in hours:
            raise ValueError(f"--budget-device-hours: {kind} is given twice")
        hours[kind] = value
    return Budgets(usd=usd, device_hours=hours)


def _ledger(cpu_s: float, cuda_s: float, tokens: int, llm_usd: float, prices: Prices) -> Ledger:
    device_s = {"cpu": round(cpu_s, 3), "cuda": round(cuda_s, 3)}
    compute = sum(seconds / HOUR_S * prices.device_hour.get(kind, 0.0) for kind, seconds in device_s.items())
    return Ledger(device_s, int(tokens), round(llm_usd, 6), round(compute, 6), round(llm_usd + compute, 6))


def campaign_ledger(lineage: Lineage, camp: Campaign) -> Ledger:
    """The campaign's whole cost: its trials' and its LLM calls that led to no proposal."""
    cpu_s, cuda_s, tokens, usd = lineage.db.execute(
        f"SELECT {_SUMS} FROM trials WHERE campaign_id = ?",
        (camp.campaign_id,),
    ).fetchone()
    extra_tokens, extra_usd = lineage.db.execute(
        "SELECT unproposed_tokens, unproposed_usd FROM campaigns WHERE campaign_id = ?", (camp.campaign_id,)
    ).fetchone()
    return _ledger(cpu_s, cuda_s, tokens + (extra_tokens or 0), usd + (extra_usd or 0.0), camp.prices)


def text(spent: dict) -> str:
    """A ledger (as a dict, the way JSON carries it) on one line: dollars, then what they bought."""
    hours = ", ".join(f"{kind} {seconds / HOUR_S:.3g} h" for kind, seconds in spent["device_s"].items() if seconds)
    return (f"${spent['total_usd']:.4g} (LLM ${spent['llm_usd']:.4g} for {spent['llm_tokens']} tokens,"
            f" compute ${spent['compute_usd']:.4g} for {hours or 'no device time'})")


def ledger_by(lineage: Lineage, camp: Campaign, column: str) -> dict[str, Ledger]:
    """The trials' cost grouped by one of their columns ("specialist", "label"); unfinished trials under "-"."""
    rows = lineage.db.execute(
        f"SELECT coalesce({column}, '-'), {_SUMS} FROM trials"
        f" WHERE campaign_id = ? GROUP BY 1 ORDER BY 1",
        (camp.campaign_id,),
    )
    return {key: _ledger(*sums, camp.prices) for key, *sums in rows}


def trial_ledgers(lineage: Lineage, camp: Campaign) -> dict[str, Ledger]:
    """Each trial's cost, by trial id (in trial id order)."""
    return ledger_by(lineage, camp, "trial_id")


class Spend(msgspec.Struct, frozen=True):
    """Where a campaign stands against one budget: spent so far, the expected cost of one more trial."""

    budget: str  # "usd", or "<kind>_hours"
    limit: float
    spent: float
    per_trial: float


def spends(lineage: Lineage, camp: Campaign) -> list[Spend]:
    """One Spend per budget the campaign declared, in the budget's own unit (dollars or device-hours)."""
    budgets = camp.budgets
    if not _declared(budgets):
        return []
    total = campaign_ledger(lineage, camp)
    (finished,) = lineage.db.execute(
        "SELECT count(*) FROM trials WHERE campaign_id = ? AND outcome IS NOT NULL", (camp.campaign_id,)
    ).fetchone()
    share = 1.0 / finished if finished else 0.0  # the mean cost of a finished trial so far
    found = []
    if budgets.usd is not None:
        found.append(Spend("usd", budgets.usd, total.total_usd, total.total_usd * share))
    for kind, hours in sorted(budgets.device_hours.items()):
        used = total.device_s.get(kind, 0.0) / HOUR_S
        found.append(Spend(f"{kind}_hours", hours, used, used * share))
    return found


def _says(spend: Spend) -> str:
    unit = "$" if spend.budget == "usd" else ""
    hours = "" if spend.budget == "usd" else " h"
    return (f"{unit}{spend.spent:.4g}{hours} of {unit}{spend.limit:g}{hours} spent,"
            f" a trial costs about {unit}{spend.per_trial:.2g}{hours}")


def _declared(budgets: Budgets) -> bool:
    return budgets.usd is not None or bool(budgets.device_hours)


def no_room(lineage: Lineage, camp: Campaign) -> str | None:
    """Why no new trial may start: a budget spent, or one that the trials in flight and one more would exceed.
    Asked before every proposal: a campaign without budgets costs no query."""
    if not _declared(camp.budgets):
        return None
    return _over(lineage, camp, pending=in_flight(lineage, camp.campaign_id) + 1)


def budget_spent(lineage: Lineage, camp: Campaign) -> str | None:
    """Why the campaign must stop: a budget spent, or, once no trial is in flight, one without room for
    another trial (agents start none then, so waiting would wait forever)."""
    if not _declared(camp.budgets):
        return None
    return _over(lineage, camp, pending=0 if in_flight(lineage, camp.campaign_id) else 1)


def _over(lineage: Lineage, camp: Campaign, pending: int) -> str | None:
    for spend in spends(lineage, camp):
        if spend.spent >= spend.limit or spend.spent + spend.per_trial * pending > spend.limit:
            return f"budget {spend.budget}: {_says(spend)}"
    return None


def progress(lineage: Lineage, camp: Campaign) -> list[dict]:
    """How close the campaign is to each budget, for `arx status`."""
    return [{"budget": s.budget, "limit": s.limit, "spent": round(s.spent, 6), "per_trial": round(s.per_trial, 6),
             "says": _says(s)} for s in spends(lineage, camp)]
