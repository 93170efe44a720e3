"""Where each fact lives in the stream: subjects and event ids are built here and nowhere else.

A subject names exactly one fact: `arx.ev.<campaign>.<aggregate>.<id>.<verb>`, with the attempt as a
last token for the facts an executor may write once per delivery (`...trial.t42.finished.2`). The
stream keeps at most one message per subject and nats-server refuses a second whatever headers a
client sends, so a fact can never be written twice, and the first outcome of a trial is its only one.
An event's id is its subject: unique across every campaign that ever shares the stream (JetStream's
duplicate window is stream-wide), and the same on every retry, so a retried publish collapses.
"""

from __future__ import annotations

import re

PREFIX = "arx.ev"
ALL = f"{PREFIX}.>"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_token(kind: str, value: str) -> str:
    """Ids become subject tokens and file names: refuse anything else early and clearly."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(f"{kind} {value!r} must be 1-64 characters of letters, digits, '_' or '-'")
    return value


def subject(campaign_id: str, aggregate: str, aggregate_id: str, verb: str, attempt: int | str | None = None) -> str:
    """One fact's subject; attempt "*" makes a filter for every attempt of it."""
    base = f"{PREFIX}.{campaign_id}.{aggregate}.{aggregate_id}.{verb}"
    return base if attempt is None else f"{base}.{attempt}"


def trial(campaign_id: str, trial_id: str, verb: str, attempt: int | str | None = None) -> str:
    return subject(campaign_id, "trial", trial_id, verb, attempt)


def replicate(campaign_id: str, replicate_id: str) -> str:
    """Where a confirmation rerun's finish lives (one per rerun: its id carries the index)."""
    return subject(campaign_id, "replicate", replicate_id, "finished")


def campaign(campaign_id: str, verb: str) -> str:
    return subject(campaign_id, "campaign", campaign_id, verb)


def of_campaign(campaign_id: str) -> str:
    """Every fact of one campaign."""
    return f"{PREFIX}.{check_token('campaign', campaign_id)}.>"


# Filters, one per kind of fact (bus.roles grants each to the roles that may write it).
STARTED_CAMPAIGNS = f"{PREFIX}.*.campaign.*.started"
STOPS = f"{PREFIX}.*.campaign.*.stopped"
JOINS = f"{PREFIX}.*.specialist.*.joined"
SPENDS = f"{PREFIX}.*.specialist.*.spent.*"
SLOTS = f"{PREFIX}.*.slot.*.claimed"
PROPOSALS = f"{PREFIX}.*.trial.*.proposed"
STARTS = f"{PREFIX}.*.trial.*.started.*"
FINISHES = f"{PREFIX}.*.trial.*.finished.*"
CONFIRMATIONS = f"{PREFIX}.*.trial.*.confirm"
REPLICATES = f"{PREFIX}.*.replicate.*.finished"
OUTCOMES = f"{PREFIX}.*.trial.*.outcome"
