"""Control arms: what a campaign's specialists may see, and which specialists a campaign runs.

- lineage: specialists bound to the task's surfaces, each reading the whole lineage;
- no-lineage: the same roster, shown only the incumbent's id and score (and its files);
- generalist: one specialist per policy, each bound to every surface ('*');
- generic: as many agents as the lineage roster, none bound to a surface and none named for one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from agents.base import Context
from agents.registry import ARMS
from bus.edits import ALL_SURFACES, path_in
from evaluators.spec import TaskSpec
from projections import views

# Policies that work on the whole campaign rather than on one surface.
CAMPAIGN_POLICIES = ("combiner", "repair")


def arm_of(context: Context) -> str:
    return context.campaign.arm or "lineage"


def sees_lineage(context: Context) -> bool:
    """False in the no-lineage arm: a policy may use the incumbent and its tree, nothing else."""
    return arm_of(context) != "no-lineage"


def view_arm(arm: str) -> str:
    """The lineage view's arm for a campaign's arm: only no-lineage hides the history."""
    return "no-lineage" if arm == "no-lineage" else "lineage"


def draw_seed(context: Context, seed: int) -> int:
    """A seed that changes with every proposal of this specialist (its own trial count is bookkeeping
    the base keeps for trial ids too), for policies that must choose blind in the no-lineage arm."""
    count = views.trial_count(context.lineage, context.campaign_id, context.specialist)
    digest = hashlib.sha256(f"{seed}:{context.specialist}:{count}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Member:
    """One agent process of a campaign: `arx agent --policy P --specialist S --surface F`."""

    policy: str
    specialist: str
    surface: str


def surface_policies(spec: TaskSpec, surface: str) -> list[str]:
    """The offline policies that have something to work with on a surface ('*': on any)."""
    paths = spec.paths_of(surface)
    policies = []
    if any(path_in(k.path, paths) for k in spec.knobs):
        policies.append("tpe")
    if any(surface in (ALL_SURFACES, t.surface) for t in spec.transforms):
        policies.append("catalog")
    return policies


def roster(spec: TaskSpec, arm: str) -> list[Member]:
    """The offline agents a campaign of this arm runs."""
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r} is not one of {', '.join(ARMS)}")
    campaign_wide = [Member(p, p, ALL_SURFACES) for p in CAMPAIGN_POLICIES]
    if arm == "generalist":
        return [Member(p, f"{p}-all", ALL_SURFACES) for p in surface_policies(spec, ALL_SURFACES)] + campaign_wide
    specialists = [
        Member(p, f"{p}-{s.name}", s.name) for s in spec.surfaces for p in surface_policies(spec, s.name)
    ]
    if arm == "generic":
        return [Member(m.policy, f"agent-{i}", ALL_SURFACES) for i, m in enumerate(specialists, 1)] + campaign_wide
    return specialists + campaign_wide
