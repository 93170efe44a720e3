"""The specialist loop against a real nats-server: campaign choice, in-flight and budget limits,
stopping, restarting without private memory, and trees rebuilt from the log."""

from __future__ import annotations

import time

import anyio
import msgspec
import pytest
from agent_helpers import (
    BASELINE_FILES,
    abandon,
    folded,
    propose,
    score,
    start_campaign,
    stays_at,
    stop_campaign,
    trials_of,
    wait_for_trials,
)

from agents.base import (
    BREAKER_FIRST_S,
    BREAKER_MAX_S,
    BREAKER_TRIALS,
    HYPOTHESIS_KEPT_CHARS,
    Context,
    Proposal,
    Specialist,
    breaker_wait,
)
from agents.edits import apply_diff, read_knob, set_knob, unified_diff
from agents.trees import Trees
from bus.connection import Bus
from bus.events import MAX_DIFF_BYTES, MAX_HYPOTHESIS_BYTES, SlotClaimed, TrialProposed, decode, oversize
from projections import views

pytestmark = pytest.mark.anyio


class StepEpochs(Specialist):
    """A minimal policy: one more epoch than the parent has."""

    policy = "step"

    async def propose(self, context: Context) -> Proposal:
        old = context.files["train.py"]
        new = set_knob(old, "EPOCHS", read_knob(old, "EPOCHS") + 1)
        return Proposal(
            hypothesis="one more epoch", diff=unified_diff("train.py", old, new), shown_ids=[context.parent_id]
        )


class Broken(Specialist):
    policy = "broken"

    async def propose(self, context: Context) -> Proposal:
        raise RuntimeError("policy bug")


def stepper(**kwargs) -> StepEpochs:
    return StepEpochs(specialist="stepper", surface="optimizer", poll_s=0.1, **kwargs)


async def run_until_stopped(agent: Specialist, bus: Bus, c: str, steps) -> str:
    """Run agent beside the test steps, stop the campaign, and return what run() returned."""
    result = {}

    async def run():
        result["campaign"] = await agent.run()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await steps()
            await stop_campaign(bus, c)
    return result["campaign"]


async def joined_events(bus: Bus, c: str) -> list:
    events = []
    async for batch in bus.read(subject=f"arx.ev.{c}.specialist.>"):
        events += [decode(m.data) for m in batch]
    return events


async def test_respects_max_in_flight_and_a_restart_carries_on(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        await score(bus, "c1", "baseline", 10.0)

        first = stepper(max_in_flight=2)

        async def steps():
            rows = await wait_for_trials(bus, "c1", "stepper", 2)
            assert await stays_at(bus, first, "c1", 2)
            assert [r["trial_id"][:13] for r in rows] == ["stepper-0001-", "stepper-0002-"]
            assert all(r["parent_id"] == "baseline" and r["policy"] == "step" for r in rows)
            assert rows[0]["shown_ids"] == '["baseline"]'

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.run)
                await steps()
                tg.cancel_scope.cancel()  # the process dies; its trials stay in flight

        second = stepper(max_in_flight=2)

        async def after_restart():
            # The new process counts the two in-flight trials from the log and waits.
            assert await stays_at(bus, second, "c1", 2)
            await score(bus, "c1", (await trials_of(bus, "c1", "stepper"))[0]["trial_id"], 11.0, "discard")
            rows = await wait_for_trials(bus, "c1", "stepper", 3)
            assert rows[2]["trial_id"].startswith("stepper-0003-")

        assert await run_until_stopped(second, bus, "c1", after_restart) == "c1"
        assert len(await trials_of(bus, "c1", "stepper")) == 3  # and it has exited: no more can come
        joined = await joined_events(bus, "c1")
        assert [(e.specialist, e.surface, e.policy) for e in joined] == [("stepper", "optimizer", "step")]


async def test_stops_proposing_when_the_budget_is_used(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1", max_trials=3)
        await score(bus, "c1", "baseline", 10.0)

        agent = stepper(max_in_flight=5)

        async def steps():
            # 1 counted outcome + 2 in flight = 3: the budget is used although max_in_flight is 5.
            rows = await wait_for_trials(bus, "c1", "stepper", 2)
            assert await stays_at(bus, agent, "c1", 2)
            await score(bus, "c1", rows[0]["trial_id"], 12.0, "discard")
            assert await stays_at(bus, agent, "c1", 2)
            # An abandoned trial does not count against the budget, so its place is free again.
            await abandon(bus, "c1", rows[1]["trial_id"])
            await wait_for_trials(bus, "c1", "stepper", 3)
            assert await stays_at(bus, agent, "c1", 3)

        await run_until_stopped(agent, bus, "c1", steps)


async def test_specialists_that_share_a_budget_never_pass_it_together(arx_env):
    """Four specialists, each with room for five trials in flight, see the same free budget at once:
    trial slots, each held by one claim on its own subject, let only the budget's trials through. A
    plain client that squats a slot holds that trial back (for CLAIM_GRACE_S), never adds one."""
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1", max_trials=6)
        await score(bus, "c1", "baseline", 10.0)
        # Slots 1-5 are for the agents; a client with the agent's rights takes slot 2 for a trial it never proposes.
        squat = SlotClaimed(campaign_id="c1", slot=2, trial_id="ghost", specialist="nobody")
        assert await bus.publish(squat) and not await bus.publish(msgspec.structs.replace(squat, trial_id="ghost-2"))
        agents = [StepEpochs(specialist=f"stepper-{i}", surface="optimizer", poll_s=0.05, max_in_flight=5)
                  for i in range(4)]

        async def proposed() -> list[dict]:
            return (await folded(bus)).query("SELECT trial_id, slot FROM trials WHERE campaign_id = 'c1' AND slot > 0")

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for agent in agents:
                    tg.start_soon(agent.run)
                while len(await proposed()) < 4:
                    await anyio.sleep(0.5)  # each look folds the log with a consumer of its own
                for agent in agents:
                    assert await stays_at(bus, agent, "c1", len(await trials_of(bus, "c1", agent.specialist)))
                await stop_campaign(bus, "c1")
        rows = await proposed()
    assert sorted(row["slot"] for row in rows) == [1, 3, 4, 5]


async def test_a_slot_claimed_but_never_proposed_is_given_back_after_its_grace(arx_env):
    """An agent that dies between its claim and its proposal would otherwise hold that trial of the
    budget forever, and the campaign would never reach its count."""
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1", max_trials=3)
        await score(bus, "c1", "baseline", 10.0)
        await bus.publish(SlotClaimed(campaign_id="c1", slot=1, trial_id="died-before-proposing", specialist="x"))
        for outside in (0, -3, 10**12):  # claims no slot holds: they take nothing, and hide no free slot
            await bus.publish(SlotClaimed(campaign_id="c1", slot=outside, trial_id="ghost", specialist="x"))
        await bus.publish(SlotClaimed(campaign_id="c1", slot=2, trial_id="t2", specialist="stepper"))
        await bus.publish(TrialProposed(campaign_id="c1", trial_id="t2", specialist="stepper", surface="optimizer",
                                        parent_id="baseline", hypothesis="t2", diff="", slot=2))
        lineage = await folded(bus)
    camp = views.campaign(lineage, "c1")
    assert views.slots(lineage, camp) == []  # the budget looks spent
    later = time.time() + views.CLAIM_GRACE_S + 1
    assert views.slots(lineage, camp, now=later) == [3]  # slot 1's trial is given back as slot 3


async def test_proposes_against_the_incumbent_tree_rebuilt_from_the_chain(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        await score(bus, "c1", "baseline", 10.0)
        t1 = set_knob(BASELINE_FILES["train.py"], "LR", 0.05)
        await propose(bus, "c1", "t1", "baseline", unified_diff("train.py", BASELINE_FILES["train.py"], t1))
        await score(bus, "c1", "t1", 9.0)
        t2 = set_knob(t1, "EPOCHS", 20)
        await propose(bus, "c1", "t2", "t1", unified_diff("train.py", t1, t2))
        await score(bus, "c1", "t2", 8.0)

        trees = Trees(bus, await folded(bus), "c1")
        assert await trees.tree("t2") == {**BASELINE_FILES, "train.py": t2}
        with pytest.raises(LookupError, match="not in the lineage"):
            await trees.tree("nope")

        async def steps():
            (row,) = await wait_for_trials(bus, "c1", "stepper", 1)
            assert row["parent_id"] == "t2"
            applied = apply_diff({"train.py": t2}, row["diff"])
            assert read_knob(applied["train.py"], "EPOCHS") == 21
            assert read_knob(applied["train.py"], "LR") == 0.05

        await run_until_stopped(stepper(), bus, "c1", steps)


async def test_waits_for_a_campaign_and_picks_the_latest_running_one(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "old")
        await stop_campaign(bus, "old")

        async def steps():
            await anyio.sleep(0.5)
            assert await trials_of(bus, "old", "stepper") == []
            await start_campaign(bus, "new")
            await wait_for_trials(bus, "new", "stepper", 1)

        assert await run_until_stopped(stepper(), bus, "new", steps) == "new"
        assert await joined_events(bus, "old") == []


async def test_a_stopped_campaign_ends_the_run_at_once(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        await stop_campaign(bus, "c1")
        with anyio.fail_after(15):
            assert await stepper(campaign_id="c1").run() == "c1"
        assert await trials_of(bus, "c1", "stepper") == []


async def test_a_failing_policy_does_not_take_the_process_down(arx_env, caplog):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        agent = Broken(specialist="broken", surface="optimizer", poll_s=0.1)

        async def steps():
            with anyio.fail_after(10):
                while caplog.text.count("policy bug") < 2:  # it failed, and went on to fail again
                    await anyio.sleep(0.05)

        assert await run_until_stopped(agent, bus, "c1", steps) == "c1"
        assert await trials_of(bus, "c1", "broken") == []


async def test_an_unknown_surface_is_a_clear_error(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        agent = StepEpochs(specialist="s", surface="nonsense")
        with anyio.fail_after(15), pytest.raises(ValueError, match="no surface 'nonsense'"):
            await agent.run()
        assert await joined_events(bus, "c1") == []


def test_bad_names_are_refused_before_connecting():
    with pytest.raises(ValueError, match="specialist"):
        StepEpochs(specialist="has space", surface="optimizer")
    with pytest.raises(ValueError, match="longer than"):
        StepEpochs(specialist="x" * 60, surface="optimizer")
    with pytest.raises(ValueError, match="max_in_flight"):
        StepEpochs(specialist="s", surface="optimizer", max_in_flight=0)


class Verbose(Specialist):
    """A policy whose hypothesis is longer than any event should carry."""

    policy = "verbose"

    async def propose(self, context: Context) -> Proposal:
        return Proposal(hypothesis="x" * (MAX_HYPOTHESIS_BYTES + 1), diff="")


def test_sizes_over_a_limit_are_named():
    assert oversize("h" * MAX_HYPOTHESIS_BYTES, "d" * MAX_DIFF_BYTES) is None
    assert oversize("é" * (MAX_HYPOTHESIS_BYTES // 2 + 1), "") == (
        f"the hypothesis is {MAX_HYPOTHESIS_BYTES + 2} bytes, over its limit of {MAX_HYPOTHESIS_BYTES} bytes"
    )
    assert oversize("h", "d" * (MAX_DIFF_BYTES + 1)) == (
        f"the diff is {MAX_DIFF_BYTES + 1} bytes, over its limit of {MAX_DIFF_BYTES} bytes"
    )


async def test_a_proposal_over_a_size_limit_is_proposed_without_its_texts_and_rejected(arx_env):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        agent = Verbose(specialist="verbose", surface="optimizer", poll_s=0.1)

        async def steps():
            await wait_for_trials(bus, "c1", "verbose", 1)

        assert await run_until_stopped(agent, bus, "c1", steps) == "c1"
        (trial,) = (await trials_of(bus, "c1", "verbose"))[:1]
        proposal = await bus.last_event(f"arx.ev.c1.trial.{trial['trial_id']}.proposed")
    assert proposal.diff == "" and len(proposal.hypothesis) == HYPOTHESIS_KEPT_CHARS
    assert proposal.rejection == (f"the hypothesis is {MAX_HYPOTHESIS_BYTES + 1} bytes, "
                                  f"over its limit of {MAX_HYPOTHESIS_BYTES} bytes")


def test_the_breaker_opens_after_harness_aborts_and_its_wait_doubles_up_to_the_ceiling():
    aborts = ["harness_abort"] * 20
    assert [breaker_wait(aborts[:n]) for n in range(BREAKER_TRIALS)] == [0.0] * BREAKER_TRIALS
    waits = [breaker_wait(aborts[:n]) for n in range(BREAKER_TRIALS, 20)]
    assert waits[:5] == [BREAKER_FIRST_S * 2**k for k in range(5)] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert waits[5:] == [BREAKER_MAX_S] * 12  # 64 s would be next: it stays at the ceiling
    # Newest first: any other outcome among the last three closes it again.
    assert breaker_wait(["crash", *aborts]) == 0.0
    assert breaker_wait(["harness_abort", "harness_abort", "keep", *aborts]) == 0.0


async def test_the_loop_backs_off_after_harness_aborts_and_goes_on_after_another_outcome(arx_env, caplog):
    async with await Bus.connect(role="admin") as bus:
        await start_campaign(bus, "c1")
        await score(bus, "c1", "baseline", 10.0)
        for n in range(BREAKER_TRIALS):
            await propose(bus, "c1", f"aborted-{n}", "baseline", "", specialist="stepper")
            await abandon(bus, "c1", f"aborted-{n}")

        async def steps():
            began = time.monotonic()
            rows = await wait_for_trials(bus, "c1", "stepper", BREAKER_TRIALS + 1)
            assert time.monotonic() - began >= BREAKER_FIRST_S
            await score(bus, "c1", rows[-1]["trial_id"], 11.0, "discard")
            await wait_for_trials(bus, "c1", "stepper", BREAKER_TRIALS + 2)

        await run_until_stopped(stepper(), bus, "c1", steps)
    backed_off = [r.getMessage() for r in caplog.records if "backing off" in r.getMessage()]
    assert backed_off == ["stepper: backing off 2s: last 3 trials ended in harness_abort"]
