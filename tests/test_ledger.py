"""The cost ledger: what each trial and the campaign cost, folded from the events the roles write, the
same after a replay; and budgets in dollars and device-hours that stop real campaigns."""

from __future__ import annotations

import json

import anyio
import msgspec
import pytest
from agent_helpers import folded, score, start_campaign, stop_campaign
from cluster import ROOT, Cluster
from openai_server import Reply, completion
from projection_events import campaign_started, finished, proposed, scored

from agents.llm import LLMSpecialist
from bus.connection import Bus, StoredMessage
from bus.events import Budgets, LLMSpent, Prices, ReplicateFinished, encode
from evaluators.spec import Task
from projections import ledger, views
from projections.lineage import Lineage
from projections.projector import file_batches, replay

C = "c1"
TINY = Task(ROOT / "tests" / "tasks" / "tiny")
PRICES = Prices(llm={"m": (1.0, 2.0)}, device_hour={"cpu": 0.36, "cuda": 3.6})


replace = msgspec.structs.replace


def spent(finish, device_s: dict[str, float]):
    return replace(finish, device_s=device_s)


def costly_log() -> list:
    """A campaign whose trials spend CPU, GPU, scoring time and LLM tokens, with a rival finish, a
    confirmation rerun and LLM calls that led to no proposal."""
    started = replace(campaign_started(C), prices=PRICES, budgets=Budgets(usd=1.0))
    events = [started, proposed(C, "baseline", None), spent(finished(C, "baseline"), {"cpu": 100.0}),
              replace(scored(C, "baseline", "keep", 10.0, None), eval_s=2.0)]
    for i, label in enumerate(("keep", "discard", "crash")):
        trial = replace(proposed(C, f"t{i}", "baseline", "llm-main"), model="m", tokens_in=1000, tokens_out=500,
                        cost_usd=0.002)
        events += [trial, spent(finished(C, f"t{i}"), {"cpu": 10.0, "cuda": 36.0}),
                   replace(scored(C, f"t{i}", label, 9.0 - i, ("baseline", 10.0)), eval_s=1.0)]
    # A second executor's finish of t0 (a redelivery that also ran) and a confirmation rerun: both paid for.
    events.append(replace(spent(finished(C, "t0"), {"cpu": 5.0}), event_id="t0-rival", attempt=2))
    events.append(ReplicateFinished(campaign_id=C, trial_id="baseline", confirm_of="t0", index=0, executor="x",
                                    cpu_s=3.0, device_s={"cpu": 3.0}))
    events.append(LLMSpent(campaign_id=C, specialist="llm-main", model="m", tokens_in=400, tokens_out=0,
                           cost_usd=0.0004, reason="no usable reply"))
    return events


def fold(events: list, lineage: Lineage | None = None) -> Lineage:
    lineage = lineage or Lineage()
    lineage.apply([StoredMessage(seq, event.subject, encode(event)) for seq, event in enumerate(events, 1)])
    return lineage


def test_the_ledger_is_the_sum_of_the_events_and_the_same_after_a_replay(tmp_path):
    events = costly_log()
    lineage = fold(events)
    camp = views.campaign(lineage, C)
    total = ledger.campaign_ledger(lineage, camp)
    # Summed here from the events themselves: runs (rival and rerun included) and scoring on the CPU side.
    cpu = sum(e.device_s.get("cpu", 0) for e in events if hasattr(e, "device_s")) + sum(
        getattr(e, "eval_s", 0) for e in events)
    cuda = sum(e.device_s.get("cuda", 0) for e in events if hasattr(e, "device_s"))
    llm_usd = sum(getattr(e, "cost_usd", 0) for e in events)
    assert total.device_s == {"cpu": cpu, "cuda": cuda} == {"cpu": 143.0, "cuda": 108.0}
    assert total.llm_tokens == 3 * 1500 + 400 and total.llm_usd == pytest.approx(llm_usd) == pytest.approx(0.0064)
    assert total.compute_usd == pytest.approx(143 / 3600 * 0.36 + 108 / 3600 * 3.6)
    assert total.total_usd == pytest.approx(total.compute_usd + total.llm_usd)
    # The confirmation rerun is its candidate's cost; the rival finish too.
    t0 = ledger.trial_ledgers(lineage, camp)["t0"]
    assert t0.device_s == {"cpu": 10.0 + 5.0 + 3.0 + 1.0, "cuda": 36.0}
    by_label = ledger.ledger_by(lineage, camp, "label")
    assert set(by_label) == {"keep", "discard", "crash"}
    assert sum(v.total_usd for v in by_label.values()) == pytest.approx(total.total_usd - 0.0004)

    # The same ledger from the event file, replayed, and from a replay of that replay.
    file = tmp_path / "events.jsonl"
    file.write_bytes(b"".join(encode(e) + b"\n" for e in events))
    for db in (tmp_path / "a.db", tmp_path / "b.db"):
        anyio.run(replay, file_batches(file), db)
        replayed = Lineage(db, readonly=True)
        try:
            assert ledger.campaign_ledger(replayed, views.campaign(replayed, C)) == total
        finally:
            replayed.close()


def test_budgets_leave_no_room_for_a_trial_that_would_pass_them():
    events = costly_log()
    lineage = fold(events)
    camp = views.campaign(lineage, C)
    spent = ledger.campaign_ledger(lineage, camp).total_usd
    # Four trials finished: one more costs about a quarter of what was spent.
    for limit, room in ((spent * 1.3, True), (spent * 1.2, False), (spent, False)):
        budgeted = replace(camp, budgets=Budgets(usd=limit))
        assert (ledger.no_room(lineage, budgeted) is None) is room, limit
    hours = replace(camp, budgets=Budgets(device_hours={"cuda": 0.035}))
    assert ledger.budget_spent(lineage, hours).startswith("budget cuda_hours: 0.03 h of 0.035 h spent, a trial costs about 0.0075 h")
    (row,) = ledger.progress(lineage, hours)
    assert (row["budget"], row["limit"], row["spent"]) == ("cuda_hours", 0.035, 0.03)
    with pytest.raises(ValueError, match="--budget-device-hours tpu=1"):
        ledger.budgets_from(None, ["tpu=1"])
    with pytest.raises(ValueError, match="--budget-usd 0"):
        ledger.budgets_from(0.0, [])
    assert ledger.budgets_from(2.5, ["cuda=8", "cpu=100"]) == Budgets(usd=2.5, device_hours={"cuda": 8, "cpu": 100})


def test_a_device_hours_budget_stops_a_real_campaign(arx_env, tmp_path):
    cluster = Cluster(arx_env, tmp_path / "logs")
    try:
        cluster.start("evaluator", "evaluator", "--name", "evaluator-1")
        cluster.start("executor", "executor", "--name", "executor-1")
        # About 2 CPU-seconds: a few of the tiny task's runs (a fraction of a second each, scoring included).
        cluster.command("campaign", "start", "--task", "tiny", "--trials", "200", "--campaign", "cpu-budget",
                        "--budget-device-hours", "cpu=0.0006")
        cluster.start("agent", "agent", "--specialist", "tpe-main", "--surface", "main", "--campaign", "cpu-budget")
        summary = cluster.wait_stopped("cpu-budget", timeout=240)
        audited = cluster.command("audit", "--campaign", "cpu-budget", "--json")
    finally:
        cluster.stop_all()
    audit = json.loads(audited)["campaigns"]["cpu-budget"]
    assert summary["stop_reason"].startswith("budget cpu_hours: "), summary["stop_reason"]
    (budget,) = summary["budgets"]
    assert budget["budget"] == "cpu_hours" and budget["limit"] == 0.0006
    assert summary["ledger"]["device_s"]["cpu"] == pytest.approx(budget["spent"] * 3600, abs=0.01)
    assert 2 <= summary["trials_scored"] < 200
    # It stopped on the budget, within about one trial of it.
    assert budget["spent"] + budget["per_trial"] > budget["limit"]
    assert budget["spent"] <= budget["limit"] + 2 * budget["per_trial"]
    assert audit["cost"]["total"] == summary["ledger"]


GOOD = json.dumps({"hypothesis": "a lower VALUE", "expected_delta": -1.0, "diff": "",
                   "edits": [{"path": "train.py", "search": "VALUE = 5.0", "replace": "VALUE = 4.0"}]})


def test_a_dollar_budget_stops_an_llm_campaign(llm, arx_env, tmp_path, monkeypatch):
    """$0.0012 a proposal (1,200 tokens at $1 a million) against a $0.003 budget: a third would pass it.
    The second answer no longer applies (the first was kept), and is paid for all the same."""
    monkeypatch.setenv("ARX_LLM_REPAIR_ROUNDS", "0")  # one reply per proposal, so each costs the same
    monkeypatch.setenv("ARX_LLM_PRICES", json.dumps({"m": [1.0, 1.0]}))
    llm.push(*[completion(GOOD, tokens=(1000, 200)) for _ in range(4)])
    cluster = Cluster({**arx_env, "ARX_LLM_PRICES": json.dumps({"m": [1.0, 1.0]})}, tmp_path / "logs")
    try:
        cluster.start("evaluator", "evaluator", "--name", "evaluator-1")
        cluster.start("executor", "executor", "--name", "executor-1")
        cluster.command("campaign", "start", "--task", "tiny", "--trials", "20", "--campaign", "usd",
                        "--budget-usd", "0.003")
        agent = LLMSpecialist(specialist="llm-main", surface="main", model="m", poll_s=0.1, campaign_id="usd")

        async def run() -> None:
            with anyio.fail_after(120):
                await agent.run()  # returns once the campaign stopped

        anyio.run(run)
        summary = cluster.wait_stopped("usd", timeout=60)
    finally:
        cluster.stop_all()
    assert summary["stop_reason"].startswith("budget usd: $0.0024 of $0.003 spent"), summary["stop_reason"]
    assert summary["ledger"]["llm_usd"] == pytest.approx(0.0024) and summary["ledger"]["llm_tokens"] == 2400
    assert summary["labels"] == {"keep": 2, "invalid_edit": 1}  # the baseline, one keep, one that missed
    assert len(llm.requests) == 2 and summary["campaign"] == "usd"
    assert summary["budgets"][0]["limit"] == 0.003


def test_llm_calls_that_led_to_no_proposal_are_in_the_ledger(llm, arx_env, monkeypatch):
    """Replies that are no chat completion but bill tokens: no trial, yet the campaign's ledger has them."""
    monkeypatch.setenv("ARX_LLM_ATTEMPTS", "2")
    monkeypatch.setenv("ARX_LLM_PRICES", json.dumps({"m": [1.0, 1.0]}))
    body = json.dumps({"id": "x", "object": "chat.completion", "choices": [],
                       "usage": {"prompt_tokens": 700, "completion_tokens": 0, "total_tokens": 700}}).encode()
    llm.push(Reply(body=body), Reply(body=body))

    async def run() -> None:
        async with await Bus.connect(role="admin") as bus:
            await start_campaign(bus, C, task=TINY, baseline_params=False)
            await score(bus, C, "baseline", 5.0)
            agent = LLMSpecialist(specialist="llm-main", surface="main", model="m", poll_s=0.1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.run)
                with anyio.fail_after(30):
                    while not (await folded(bus)).query(
                            "SELECT 1 FROM campaigns WHERE unproposed_tokens > 0"):
                        await anyio.sleep(0.1)
                await stop_campaign(bus, C)
            lineage = await folded(bus)
            total = ledger.campaign_ledger(lineage, views.campaign(lineage, C))
            assert total.llm_tokens == 1400 and total.llm_usd == pytest.approx(0.0014)
            assert lineage.query("SELECT count(*) AS n FROM trials WHERE specialist = 'llm-main'")[0]["n"] == 0

    anyio.run(run)
