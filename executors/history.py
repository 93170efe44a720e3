"""`arx history`: a campaign's git repository as its research history, built from the log.

Every trial gets the commit executors build for it (`refs/arx/trials/<id>`, its parent the parent
trial's commit), with its outcome attached as a git note (label, score, delta vs parent), each keep
tagged `keep/<trial>` and the branch `incumbent` on the best trial. `git log --notes incumbent` then
reads as the keep chain with its scores. It lives with the executors because it builds their commits.
"""

from __future__ import annotations

import asyncio
import sys

from bus import subjects
from bus.connection import Bus
from bus.edits import InvalidEdit
from bus.events import CampaignStarted, TrialProposed, check_token, decode
from bus.settings import load_settings
from executors.trees import CampaignRepo, materialize
from projections import view_reads, views
from projections.status import fold_campaign


def note_of(trial: views.Trial, parent_score: float | None, metric: str) -> str:
    """The outcome as a note: `keep  train_s 7.12  (-0.41 vs parent)`, or the label alone."""
    if trial.label is None:
        return "in flight: no outcome yet\n"
    if trial.score is None:
        return f"{trial.label}\n"
    change = "" if parent_score is None else f"  ({trial.score - parent_score:+.4g} vs parent)"
    return f"{trial.label}  {metric} {trial.score:.6g}{change}\n"


async def write_history(bus: Bus, campaign_id: str | None) -> tuple[CampaignRepo, int, int]:
    """The campaign's repository with every trial committed and annotated; (repo, trials, keeps)."""
    folded = await fold_campaign(bus, campaign_id)
    if folded is None:
        raise ValueError("no campaign in the log")
    campaign_id, lineage = folded
    started = await bus.last_event(subjects.campaign(campaign_id, "started"))
    if not isinstance(started, CampaignStarted):
        raise ValueError(f"no campaign {campaign_id} in the log")
    outcomes = {t.trial_id: t for t in view_reads.recent_outcomes(lineage, campaign_id, sys.maxsize)}
    best = views.incumbent(lineage, campaign_id, started.direction)
    repo = await asyncio.to_thread(CampaignRepo.for_campaign, load_settings().home, campaign_id)
    trials = keeps = 0
    async for batch in bus.read(subject=subjects.trial(campaign_id, "*", "proposed")):
        for message in batch:
            proposal = decode(message.data)
            if not isinstance(proposal, TrialProposed):
                continue
            try:
                sha = await materialize(bus, repo, proposal, started)
            except InvalidEdit:
                continue  # an edit that never applied has no commit (its outcome says why)
            trial = outcomes.get(proposal.trial_id, views.Trial(proposal.trial_id, proposal.parent_id,
                                                                 proposal.specialist, None, None, None, None))
            parent = outcomes.get(proposal.parent_id) if proposal.parent_id else None
            keep = trial.label == "keep"
            await asyncio.to_thread(
                repo.annotate, sha, note_of(trial, parent.score if parent else None, started.metric),
                tags=[f"keep/{proposal.trial_id}"] if keep else [],
                branches=["incumbent"] if best is not None and best.trial_id == proposal.trial_id else [],
            )
            trials, keeps = trials + 1, keeps + keep
    return repo, trials, keeps


def cli_arguments(parser) -> None:
    parser.add_argument("--campaign", help="campaign id (default: the latest)")


def cli(args) -> int:
    if args.campaign is not None:
        check_token("campaign", args.campaign)

    async def run():
        async with await Bus.connect(role="reader", name="arx-history") as bus:
            return await write_history(bus, args.campaign)

    repo, trials, keeps = asyncio.run(run())
    print(f"{repo.path}: {trials} trials, {keeps} keeps tagged keep/<trial>; "
          f"read it with: git -C {repo.path} log --notes incumbent")
    return 0
