"""The specialist base: every policy extends Specialist and writes only `propose`.

The loop keeps no private memory: the campaign, the budget, its own in-flight trials, the trial
numbering and every trial's tree come from the lineage (folded from the log in the background) and
the campaign bundle, so an agent that restarts carries on where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

import anyio

from agents.trees import Trees
from bus.connection import Bus
from bus.events import LLMSpent, SlotClaimed, SpecialistJoined, TrialProposed, check_token, oversize
from bus.settings import Settings, load_settings
from evaluators.spec import Task, campaign_task
from projections import ledger, reads, views
from projections.follow import LiveLineage
from projections.lineage import Lineage
from projections.views import Incumbent

log = logging.getLogger("arx.agent")

# Trial ids are "<specialist>-<nnnn>-<6 hex>" and must stay a 64-character subject token.
MAX_SPECIALIST_CHARS = 52
FOLD_TIMEOUT_S = 30.0
HYPOTHESIS_KEPT_CHARS = 1000  # of an oversize proposal's hypothesis, kept in its rejected trial
# The circuit breaker: when this specialist's last BREAKER_TRIALS outcomes were all harness_abort, the
# hosts are failing its trials, and proposing more only feeds them; it waits BREAKER_FIRST_S, twice
# as long for every further harness_abort in a row, at most BREAKER_MAX_S.
HARNESS_ABORT = "harness_abort"
BREAKER_TRIALS = 3
BREAKER_FIRST_S = 2.0
BREAKER_MAX_S = 60.0
# Outcomes read to know the streak: enough for the wait to reach its ceiling.
BREAKER_LOOKBACK = BREAKER_TRIALS + math.ceil(math.log2(BREAKER_MAX_S / BREAKER_FIRST_S))


@dataclass(frozen=True, kw_only=True)
class Proposal:
    """What a policy wants to try; the base turns it into a TrialProposed event."""

    hypothesis: str
    diff: str
    params: dict[str, float] = field(default_factory=dict)
    expected_delta: float | None = None
    # None: the context's default parent (the incumbent); the diff must be against this parent's tree.
    parent_id: str | None = None
    shown_ids: list[str] = field(default_factory=list)
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    # Why the policy could not produce a valid edit: the trial is published with this reason, and an
    # executor records it as its invalid_edit outcome, so the failure is in the lineage and counts.
    rejection: str | None = None


@dataclass(frozen=True)
class Spent:
    """What a policy paid for a try that led to no proposal (an LLM endpoint whose replies were all
    unusable): published as LLMSpent, so the campaign's ledger counts it though no trial exists."""

    model: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    reason: str


@dataclass(frozen=True, kw_only=True)
class Context:
    """Everything a policy may look at: the lineage, the campaign, the task and trees of trials."""

    lineage: Lineage
    campaign: views.Campaign
    task: Task
    specialist: str
    surface: str
    incumbent: Incumbent | None
    # The default parent: the incumbent, or the campaign's root (baseline) trial while none is kept.
    parent_id: str
    files: dict[str, str]  # the default parent's tree: path -> text
    trees: Trees

    @property
    def campaign_id(self) -> str:
        return self.campaign.campaign_id

    async def tree(self, trial_id: str) -> dict[str, str]:
        """The files of any trial of this campaign, for a policy that picks another parent."""
        return await self.trees.tree(trial_id)


def breaker_wait(recent: list[str]) -> float:
    """Seconds to wait before the next proposal, from a specialist's latest outcome labels (newest
    first): none until the last BREAKER_TRIALS all are harness_abort."""
    streak = next((i for i, label in enumerate(recent) if label != HARNESS_ABORT), len(recent))
    if streak < BREAKER_TRIALS:
        return 0.0
    return min(BREAKER_FIRST_S * 2 ** (streak - BREAKER_TRIALS), BREAKER_MAX_S)


class Specialist:
    """One agent process: joins a campaign and proposes trials until the campaign stops."""

    policy: ClassVar[str] = "base"

    def __init__(
        self,
        *,
        specialist: str,
        surface: str,
        campaign_id: str | None = None,
        max_in_flight: int = 1,
        seed: int = 0,
        settings: Settings | None = None,
        poll_s: float = 2.0,
    ):
        check_token("specialist", specialist)
        if len(specialist) > MAX_SPECIALIST_CHARS:
            raise ValueError(f"specialist {specialist!r} is longer than {MAX_SPECIALIST_CHARS} characters")
        if campaign_id is not None:
            check_token("campaign", campaign_id)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.specialist = specialist
        self.surface = surface
        self.campaign_id = campaign_id
        self.max_in_flight = max_in_flight
        self.seed = seed
        self.settings = settings or load_settings()
        self.poll_s = poll_s
        # The log position up to which this specialist has made every decision it would make: it has
        # proposed all it will for the events before it. Observers (tests) prove an absence with it.
        self.settled_seq = 0

    async def propose(self, context: Context) -> Proposal | Spent | None:
        """The policy: a proposal, or None when it has nothing to try right now (Spent when that cost)."""
        raise NotImplementedError

    async def context(self, lineage: Lineage, camp: views.Campaign, task: Task, trees: Trees) -> Context | None:
        """What the policy is shown now, with the incumbent's tree (the root's while none is kept);
        None while the campaign's baseline trial is not in the log yet."""
        c = camp.campaign_id
        best = views.incumbent(lineage, c, camp.direction)
        parent = best or views.root_trial(lineage, c)
        if parent is None:
            return None
        return Context(
            lineage=lineage,
            campaign=camp,
            task=task,
            specialist=self.specialist,
            surface=self.surface,
            incumbent=best,
            parent_id=parent.trial_id,
            files=await trees.tree(parent.trial_id),
            trees=trees,
        )

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> str:
        """Work on the campaign until it stops; returns its id."""
        bus = await Bus.connect(self.settings, role="agent", name=f"arx-agent-{self.specialist}")
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                live = LiveLineage(bus)
                tg.start_soon(live.run)
                try:
                    campaign_id = await self._work(bus, live)
                except Exception as exc:  # raised as itself, not wrapped in the task group's ExceptionGroup
                    error = exc
                tg.cancel_scope.cancel()
            if error is not None:
                raise error
            return campaign_id
        finally:
            with anyio.move_on_after(5, shield=True):
                await bus.close()

    async def _work(self, bus: Bus, live: LiveLineage) -> str:
        while not await live.wait_for(await bus.last_seq(), timeout=FOLD_TIMEOUT_S):
            log.info("%s: still catching up with the log", self.specialist)
        camp = await self._pick_campaign(live)
        c = camp.campaign_id
        if camp.stopped_at is None:
            task = campaign_task(camp.task, camp.spec)
            task.spec.paths_of(self.surface)  # an unknown surface fails here, before joining
            await self._join(bus, live.lineage, c)
            trees = Trees(bus, live.lineage, c)
            await self._loop(bus, live, c, task, trees)
        log.info("%s: campaign %s stopped", self.specialist, c)
        return c

    async def _pick_campaign(self, live: LiveLineage) -> views.Campaign:
        """The named campaign, or the latest one that has not stopped; waits for it to start."""
        waiting = False
        while True:
            campaign_id = self.campaign_id if self.campaign_id is not None else views.running_campaign(live.lineage)
            camp = views.campaign(live.lineage, campaign_id) if campaign_id is not None else None
            if camp is not None:
                return camp
            if not waiting:
                log.info("%s: waiting for %s to start", self.specialist, self.campaign_id or "a campaign")
                waiting = True
            await live.changed(self.poll_s)

    async def _join(self, bus: Bus, lineage: Lineage, c: str) -> None:
        if not reads.has_joined(lineage, c, self.specialist):
            await bus.publish(
                SpecialistJoined(
                    campaign_id=c,
                    producer=self._producer,
                    specialist=self.specialist,
                    surface=self.surface,
                    policy=self.policy,
                )
            )

    async def _loop(self, bus: Bus, live: LiveLineage, c: str, task: Task, trees: Trees) -> None:
        while True:
            camp = views.campaign(live.lineage, c)
            if camp.stopped_at is not None:
                return
            seen = live.lineage.checkpoint
            if self._has_room(live.lineage, camp):
                await self._breaker(live, c)
                trial_id = await self._propose_once(bus, live.lineage, camp, task, trees)
                if trial_id is not None:
                    await self._await_folded(live, c, trial_id)
                    continue
            self.settled_seq = seen
            await live.changed(self.poll_s)

    async def _breaker(self, live: LiveLineage, c: str) -> None:
        """Wait as the breaker says (or until the campaign stops), before proposing into failing hosts."""
        wait = breaker_wait(views.recent_labels(live.lineage, c, self.specialist, BREAKER_LOOKBACK))
        if wait <= 0:
            return
        log.warning("%s: backing off %gs: last %d trials ended in %s", self.specialist, wait, BREAKER_TRIALS,
                    HARNESS_ABORT)
        with anyio.move_on_after(wait):
            while views.campaign(live.lineage, c).stopped_at is None:
                await live.changed(self.poll_s)

    def _has_room(self, lineage: Lineage, camp: views.Campaign) -> bool:
        c = camp.campaign_id
        used = views.counted_outcomes(lineage, c) + views.in_flight(lineage, c)
        return (used < camp.max_trials and views.in_flight(lineage, c, self.specialist) < self.max_in_flight
                and ledger.no_room(lineage, camp) is None)

    async def _propose_once(self, bus: Bus, lineage: Lineage, camp: views.Campaign, task: Task, trees: Trees
                            ) -> str | None:
        """Ask the policy once and publish what it proposes; returns the new trial id or None."""
        c = camp.campaign_id
        try:
            context = await self.context(lineage, camp, task, trees)
            if context is None:
                return None
            proposal = await self.propose(context)
            if isinstance(proposal, Proposal):
                self._check(lineage, c, proposal)
        except Exception:
            # A policy that fails must not take the process down: say why and try again later.
            log.exception("%s: proposing a trial for %s failed", self.specialist, c)
            await anyio.sleep(self.poll_s)
            return None
        if isinstance(proposal, Spent):
            await self._publish_spent(bus, c, proposal)
            return None
        if proposal is None:
            return None
        if (too_big := oversize(proposal.hypothesis, proposal.diff)) is not None:
            # Proposed without its texts and rejected: the attempt counts, so a policy cannot loop on it.
            proposal = dataclasses.replace(proposal, hypothesis=proposal.hypothesis[:HYPOTHESIS_KEPT_CHARS], diff="",
                                           rejection=too_big)
        trial_id = self._next_trial_id(lineage, c)
        slot = await self._claim_slot(bus, lineage, c, trial_id)
        if slot is None:  # stopped meanwhile, or other agents took the last slots: the proposal is dropped
            if proposal.tokens_in or proposal.tokens_out:  # but not what it cost
                await self._publish_spent(bus, c, Spent(proposal.model, proposal.tokens_in, proposal.tokens_out,
                                                        proposal.cost_usd, "no trial slot left for the proposal"))
            return None
        await bus.publish(self._event(c, trial_id, proposal.parent_id or context.parent_id, proposal, slot))
        if proposal.rejection is not None:  # an executor writes its invalid_edit outcome: agents write none
            log.warning("%s: %s is invalid_edit: %s", self.specialist, trial_id, proposal.rejection)
        else:
            log.info("%s: proposed %s: %s", self.specialist, trial_id, proposal.hypothesis)
        return trial_id

    @staticmethod
    def _check(lineage: Lineage, c: str, proposal: Proposal) -> None:
        if proposal.parent_id is not None and not reads.has_trial(lineage, c, proposal.parent_id):
            raise ValueError(f"proposal names parent {proposal.parent_id!r}, which is not a trial of {c}")

    async def _claim_slot(self, bus: Bus, lineage: Lineage, c: str, trial_id: str) -> int | None:
        """The first of the campaign's free trial slots this agent wins, or None when none is left."""
        camp = views.campaign(lineage, c)
        if camp.stopped_at is not None:
            return None
        for slot in views.slots(lineage, camp):
            claim = SlotClaimed(campaign_id=c, producer=self._producer, slot=slot, trial_id=trial_id,
                                specialist=self.specialist)
            if await bus.publish(claim):
                return slot
        return None

    async def _publish_spent(self, bus: Bus, c: str, spent: Spent) -> None:
        await bus.publish(LLMSpent(campaign_id=c, producer=self._producer, specialist=self.specialist,
                                   model=spent.model, tokens_in=spent.tokens_in, tokens_out=spent.tokens_out,
                                   cost_usd=spent.cost_usd, reason=spent.reason[:2000]))

    def _next_trial_id(self, lineage: Lineage, c: str) -> str:
        count = views.trial_count(lineage, c, self.specialist)
        return check_token("trial", f"{self.specialist}-{count + 1:04d}-{uuid.uuid4().hex[:6]}")

    def _event(self, c: str, trial_id: str, parent_id: str, proposal: Proposal, slot: int | None = None
               ) -> TrialProposed:
        return TrialProposed(
            campaign_id=c,
            producer=self._producer,
            trial_id=trial_id,
            specialist=self.specialist,
            surface=self.surface,
            parent_id=parent_id,
            hypothesis=proposal.hypothesis,
            diff=proposal.diff,
            expected_delta=proposal.expected_delta,
            shown_ids=list(proposal.shown_ids),
            params=dict(proposal.params),
            policy=self.policy,
            model=proposal.model,
            tokens_in=proposal.tokens_in,
            tokens_out=proposal.tokens_out,
            latency_s=proposal.latency_s,
            cost_usd=proposal.cost_usd,
            rejection=proposal.rejection,
            slot=slot,
        )

    async def _await_folded(self, live: LiveLineage, c: str, trial_id: str) -> None:
        """Count our own proposal before deciding on the next one, so max_in_flight holds."""
        with anyio.move_on_after(FOLD_TIMEOUT_S):
            while not reads.has_trial(live.lineage, c, trial_id):
                await live.changed(self.poll_s)
            return
        log.warning("%s: %s not seen in the log after %.0fs", self.specialist, trial_id, FOLD_TIMEOUT_S)

    @property
    def _producer(self) -> str:
        return f"agent:{self.specialist}"
