"""The LLM specialist against a real local OpenAI-compatible server with scripted answers and a real
nats-server: good answers become trials, every bad answer a bounded retry or an invalid_edit outcome
with its reason, endpoint failures never stop the agent, and the cost cap stops proposals."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest
from agent_helpers import executor_beside, folded, propose, score, start_campaign, stays_at, stop_campaign, wait_for_trials
from openai_server import Reply, completion, error, raw

from agents.cli import build_specialist
from agents.edits import apply_diff, read_knob, unified_diff
from agents.lineage_view import build_view
from agents.llm import LLMSpecialist
from agents.llm_edits import MAX_ANSWER_CHARS, Answer, AnswerError, EditBlock, EditRules, apply_answer
from agents.trees import bundle_files
from bus.connection import Bus
from evaluators.spec import Task
from bus.edits import check_edit

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
TINY = Task(ROOT / "tests" / "tasks" / "tiny")
BASELINE = bundle_files(TINY.bundle())
MODEL = "scripted-model"
SPECIALIST = "llm-main"


def edit(path: str = "train.py", search: str = "VALUE = 5.0", replace: str = "VALUE = 4.0", **extra) -> str:
    return json.dumps(
        {"hypothesis": f"set {path}", "expected_delta": -1.0,
         "edits": [{"path": path, "search": search, "replace": replace}], "diff": "", **extra}
    )


def diff_answer(diff: str) -> str:
    return json.dumps({"hypothesis": "a diff", "expected_delta": None, "edits": [], "diff": diff})


GOOD = edit()
ON_T1 = edit(search="VALUE = 4.0", replace="VALUE = 3.0")  # an edit of other_trials' incumbent
SYMLINK = "diff --git a/train.py b/train.py\nold mode 100644\nnew mode 120000\n"
BINARY_PATCH = "diff --git a/train.py b/train.py\nindex 1..2 100644\nGIT binary patch\nliteral 1\nIcmZo$00002\n"


def agent(**kwargs) -> LLMSpecialist:
    return LLMSpecialist(specialist=SPECIALIST, surface="main", model=MODEL, poll_s=0.1, **kwargs)


async def run_until_stopped(
    specialist: LLMSpecialist, bus: Bus, c: str, steps, timeout: float = 60, *, executor: bool = False
) -> None:
    """Run the agent beside the test's steps, then stop the campaign; the agent must return by itself.
    With an executor, which writes the invalid_edit outcome of each proposal the agent itself rejects."""
    with anyio.fail_after(timeout):
        async with executor_beside(bus) if executor else contextlib.nullcontext():
            async with anyio.create_task_group() as tg:
                tg.start_soon(specialist.run)
                await steps()
                await stop_campaign(bus, c)


async def wait_for_label(bus: Bus, c: str, trial_id: str, timeout: float = 30.0) -> dict:
    with anyio.fail_after(timeout):
        while (row := (await folded(bus)).query(
            "SELECT * FROM trials WHERE campaign_id = ? AND trial_id = ?", (c, trial_id)
        )[0])["label"] is None:
            await anyio.sleep(0.05)
    return row


async def tiny_campaign(bus: Bus, c: str = "c1", *, max_trials: int = 50, **kwargs) -> None:
    await start_campaign(bus, c, task=TINY, baseline_params=False, max_trials=max_trials, **kwargs)
    await score(bus, c, "baseline", 5.0)


def prompt(request: dict) -> str:
    return request["messages"][1]["content"]


async def test_a_good_answer_becomes_a_trial_with_its_diff_tokens_cost_and_shown_ids(llm, monkeypatch):
    monkeypatch.setenv("ARX_LLM_PRICES", json.dumps({MODEL: [2.0, 8.0]}))
    llm.push(completion(GOOD, tokens=(1000, 250)))
    async with await Bus.connect(role="admin") as bus:
        await tiny_campaign(bus)

        async def steps():
            (row,) = await wait_for_trials(bus, "c1", SPECIALIST, 1)
            assert read_knob(apply_diff(BASELINE, row["diff"])["train.py"], "VALUE") == 4.0
            assert (row["policy"], row["model"], row["parent_id"], row["label"]) == ("llm", MODEL, "baseline", None)
            assert (row["tokens_in"], row["tokens_out"], row["expected_delta"]) == (1000, 250, -1.0)
            assert row["cost_usd"] == pytest.approx((1000 * 2.0 + 250 * 8.0) / 1e6)
            assert row["latency_s"] > 0
            assert json.loads(row["shown_ids"]) == ["baseline"]

        await run_until_stopped(agent(), bus, "c1", steps)

    (request,) = llm.requests
    assert request["model"] == MODEL and request["max_tokens"] == 8192
    assert request["response_format"]["type"] == "json_schema"
    schema = request["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["hypothesis", "expected_delta", "edits", "diff"]
    assert "You are llm-main" in request["messages"][0]["content"]
    text = prompt(request)
    assert TINY.spec.description in text
    assert "## train.py\n```\n" + BASELINE["train.py"] + "```" in text
    assert "Gates: value >= 0 (else disqualified)" in text
    assert "**Incumbent (the best kept trial): baseline**, value = 5" in text


async def test_the_prompt_carries_the_lineage_view_and_its_ids(llm):
    llm.push(completion(ON_T1))
    async with await Bus.connect(role="admin") as bus:
        await tiny_campaign(bus)
        await other_trials(bus, "c1")
        expected = build_view(await folded(bus), "c1", SPECIALIST)

        async def steps():
            (row,) = await wait_for_trials(bus, "c1", SPECIALIST, 1)
            assert row["parent_id"] == "t1"
            assert json.loads(row["shown_ids"]) == expected.shown_ids == ["t1", "baseline", "t2"]

        await run_until_stopped(agent(), bus, "c1", steps)
    assert expected.render().rstrip() in prompt(llm.requests[0])
    assert "VALUE = 4.0" in prompt(llm.requests[0])  # the files are the incumbent's


async def other_trials(bus: Bus, c: str) -> None:
    """Another specialist's history: t1 kept (VALUE 4.0), t2 a discarded child of it."""
    t1 = BASELINE["train.py"].replace("VALUE = 5.0", "VALUE = 4.0")
    await propose(bus, c, "t1", "baseline", unified_diff("train.py", BASELINE["train.py"], t1))
    await score(bus, c, "t1", 4.0)
    t2 = t1.replace("VALUE = 4.0", "VALUE = 4.5")
    await propose(bus, c, "t2", "t1", unified_diff("train.py", t1, t2))
    await score(bus, c, "t2", 4.5, "discard")


@pytest.mark.parametrize("how", ["flag", "campaign arm"])
async def test_without_lineage_the_prompt_shows_only_the_incumbent(llm, how):
    llm.push(completion(ON_T1))
    async with await Bus.connect(role="admin") as bus:
        await tiny_campaign(bus, arm="no-lineage" if how == "campaign arm" else "lineage")
        await other_trials(bus, "c1")

        async def steps():
            (row,) = await wait_for_trials(bus, "c1", SPECIALIST, 1)
            assert json.loads(row["shown_ids"]) == ["t1"]

        await run_until_stopped(agent(no_lineage=how == "flag"), bus, "c1", steps)
    text = prompt(llm.requests[0])
    assert "Incumbent: t1 (value = 4)" in text
    assert "t2" not in text and "baseline" not in text and "test trial" not in text


BAD_ANSWERS = [
    ("malformed", completion("VALUE should go down {not json"), "not a JSON object"),
    ("empty", completion(""), "the answer is empty"),
    ("no content", completion(None), "the answer is empty"),
    ("truncated", completion(GOOD[:40], finish_reason="length"), "cut off at the token limit"),
    ("huge", completion("x" * (MAX_ANSWER_CHARS + 1)), f"over the cap of {MAX_ANSWER_CHARS}"),
    ("missing fields", completion(json.dumps({"edits": [], "diff": ""})), "missing required field `hypothesis`"),
    ("no edit", completion(json.dumps({"hypothesis": "h"})), "exactly one of them"),
    ("wrong types", completion(json.dumps({"hypothesis": "h", "edits": "VALUE=1"})), "Expected `array`"),
    ("search absent", completion(edit(search="VALUE = 7.0")), "the SEARCH text was not found"),
    ("search twice", completion(edit(search="import ")), "the SEARCH text occurs 3 times"),
    ("absolute path", completion(edit(path="/etc/passwd", search="")), "absolute paths are not allowed"),
    ("dot-dot", completion(edit(path="notes/../../task.py")), "'..' is not allowed"),
    ("symlink", completion(diff_answer(SYMLINK)), "symlinks are not allowed"),
    ("frozen", completion(edit(path="data/seed.txt", search="")), "is frozen"),
    ("evaluator file", completion(edit(path="task.py", search="")), "is a task or evaluator file"),
    ("outside the surface", completion(edit(path="notes/idea.md", search="")), "outside the surface 'main'"),
    ("diff outside the surface", completion(diff_answer(unified_diff("notes.md", "", "x\n"))), "outside the surface"),
    ("binary content", completion(edit(replace="VALUE = 4.0\x00")), "binary content (NUL bytes)"),
    ("binary patch", completion(diff_answer(BINARY_PATCH)), "binary patches are not allowed"),
    ("diff does not apply", completion(diff_answer(unified_diff("train.py", "VALUE = 7\n", "VALUE = 8\n"))),
     "the diff does not apply"),
    ("no change", completion(edit(replace="VALUE = 5.0")), "the edit changes nothing"),
]


async def test_every_bad_answer_is_an_invalid_edit_with_its_reason_and_the_agent_carries_on(llm, monkeypatch):
    monkeypatch.setenv("ARX_LLM_REPAIR_ROUNDS", "0")
    llm.push(*[reply for _, reply, _ in BAD_ANSWERS], completion(GOOD))
    async with await Bus.connect(role="admin") as bus:
        await tiny_campaign(bus)

        async def steps():
            trials = await wait_for_trials(bus, "c1", SPECIALIST, len(BAD_ANSWERS) + 1, timeout=60)
            for bad in trials[:-1]:
                await wait_for_label(bus, "c1", bad["trial_id"])

        await run_until_stopped(agent(), bus, "c1", steps, timeout=90, executor=True)
        rows = (await folded(bus)).query(
            "SELECT * FROM trials WHERE specialist = ? ORDER BY proposed_seq", (SPECIALIST,)
        )
    assert len(llm.requests) == len(BAD_ANSWERS) + 1 and llm.unscripted == 0
    for (name, _, reason), row in zip(BAD_ANSWERS, rows):
        outcome = (row["outcome"], row["label"], row["evidence_stage"])
        assert outcome == ("TrialRejected", "invalid_edit", "propose"), name
        assert reason in row["evidence_message"], (name, row["evidence_message"])
        assert row["evidence_message"].startswith("no valid edit in 1 answer: "), name
        assert row["diff"] == "" and row["tokens_in"] == 100, name
    good = rows[-1]
    assert good["label"] is None and good["diff"]
    assert check_edit(good["diff"], ["train.py"], TINY.spec.frozen) == []


async def test_a_failed_apply_is_fed_back_and_a_bounded_number_of_retries_ends_in_invalid_edit(llm):
    bad = edit(search="VALUE = 7.0")
    llm.push(completion(bad), completion(GOOD))  # repaired on the second answer
    async with await Bus.connect(role="admin") as bus:
        await tiny_campaign(bus, max_trials=3)  # the baseline and two trials: then no more requests

        async def steps():
            (first,) = await wait_for_trials(bus, "c1", SPECIALIST, 1)
            assert first["diff"] and first["label"] is None
            assert (first["tokens_in"], first["tokens_out"]) == (200, 40)  # both calls
            llm.push(completion(bad), completion("{"), completion(""))  # 3 answers: 1 + ARX_LLM_REPAIR_ROUNDS
            await score(bus, "c1", first["trial_id"], 6.0, "discard")
            second = (await wait_for_trials(bus, "c1", SPECIALIST, 2))[1]
            assert second["diff"] == ""
            await wait_for_label(bus, "c1", second["trial_id"])
            assert await stays_at(bus, llm_agent, "c1", 2)

        llm_agent = agent()
        await run_until_stopped(llm_agent, bus, "c1", steps, executor=True)
        second = (await folded(bus)).query(
            "SELECT * FROM trials WHERE specialist = ? ORDER BY proposed_seq DESC LIMIT 1", (SPECIALIST,)
        )[0]
    assert second["label"] == "invalid_edit"
    assert second["evidence_message"].startswith("no valid edit in 3 answers: the answer is empty")
    assert second["hypothesis"] == "set train.py" and second["tokens_in"] == 300
    repaired = llm.requests[1]["messages"]
    assert [m["role"] for m in repaired] == ["system", "user", "assistant", "user"]
    assert repaired[2]["content"] == bad
    assert "the SEARCH text was not found" in repaired[3]["content"] and "(2 tries left)" in repaired[3]["content"]
    assert len(llm.requests) == 5 and len(llm.requests[4]["messages"]) == 6


async def test_an_endpoint_without_structured_output_gets_json_in_the_text(llm):
    llm.push(error(400, "response_format json_schema is not supported"),
             completion(f"Here is my proposal:\n```json\n{GOOD}\n```\nGood luck."))
    async with await Bus.connect(role="admin") as bus:
        await tiny_campaign(bus)

        async def steps():
            (row,) = await wait_for_trials(bus, "c1", SPECIALIST, 1)
            # The JSON found in the text became the trial, with its edit.
            assert read_knob(apply_diff(BASELINE, row["diff"])["train.py"], "VALUE") == 4.0
            llm.push(completion(ON_T1))
            await score(bus, "c1", row["trial_id"], 4.0)
            rows = await wait_for_trials(bus, "c1", SPECIALIST, 2)
            assert rows[1]["parent_id"] == row["trial_id"] and rows[1]["diff"]

        await run_until_stopped(agent(), bus, "c1", steps)
    assert ["response_format" in r for r in llm.requests] == [True, False, False]  # asked once, then remembered


async def test_timeouts_rate_limits_server_errors_and_garbage_are_retried_with_bounds(llm, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="arx.agent")
    monkeypatch.setenv("ARX_LLM_MAX_RETRIES", "1")  # the openai client's own retries
    monkeypatch.setenv("ARX_LLM_ATTEMPTS", "2")  # ours around them
    monkeypatch.setenv("ARX_LLM_TIMEOUT_S", "0.5")
    slow = Reply(body=completion(GOOD).body, delay_s=3.0)
    llm.push(
        error(401, "bad key"),  # not worth retrying: this proposal is given up at once
        error(429), error(500),  # attempt 1: the client retries the 429 once, then gives up on the 500
        raw(b"{not json"),  # attempt 2: a body that is no JSON at all; then the agent backs off
        slow, slow,  # a new proposal: the client times out twice
        completion(GOOD),  # attempt 2 gets through
    )
    async with await Bus.connect(role="admin") as bus:
        await tiny_campaign(bus)

        async def steps():
            (row,) = await wait_for_trials(bus, "c1", SPECIALIST, 1, timeout=30)
            assert row["diff"] and row["latency_s"] >= 1.0  # the two timeouts count in its latency
            assert row["tokens_in"] == 100

        await run_until_stopped(agent(), bus, "c1", steps)
    assert len(llm.requests) == 7 and llm.unscripted == 0
    assert "the endpoint refused the request: Error code: 401" in caplog.text
    assert "no usable reply in 2 attempts, the last: JSONDecodeError" in caplog.text
    assert "APITimeoutError" in caplog.text


async def test_the_cost_cap_stops_proposals(llm, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="arx.agent")
    monkeypatch.setenv("ARX_LLM_PRICES", json.dumps({MODEL: [1.0, 1.0]}))
    monkeypatch.setenv("ARX_COST_CAP_USD", "0.001")
    llm.push(completion(GOOD, tokens=(1000, 200)), completion(GOOD))
    async with await Bus.connect(role="admin") as bus:
        await tiny_campaign(bus)

        async def steps():
            (row,) = await wait_for_trials(bus, "c1", SPECIALIST, 1)
            assert row["cost_usd"] == pytest.approx(0.0012)
            await score(bus, "c1", row["trial_id"], 6.0, "discard")  # room for another trial, but no money
            assert await stays_at(bus, llm_agent, "c1", 1)

        llm_agent = agent()
        await run_until_stopped(llm_agent, bus, "c1", steps)
    assert len(llm.requests) == 1 and llm.pending() == 1
    assert "its cost cap is $0.0010: no more proposals until it stops" in caplog.text


async def test_arx_agent_runs_the_llm_policy_as_its_own_process(llm, arx_env, python):
    llm.push(completion(GOOD))
    env = {**arx_env, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key"}
    async with await Bus.connect(role="admin") as bus:
        await tiny_campaign(bus)
        command = [python, "-m", "arx", "agent", "--policy", "llm", "--model", MODEL, "--specialist", "llm-cli",
                   "--surface", "main", "--no-lineage"]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            (row,) = await wait_for_trials(bus, "c1", "llm-cli", 1, timeout=30)
            await stop_campaign(bus, "c1")
            out, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
        finally:
            proc.kill()
    assert proc.returncode == 0, out
    assert row["model"] == MODEL and json.loads(row["shown_ids"]) == ["baseline"]
    assert "Incumbent: baseline (value = 5)" in prompt(llm.requests[0])


def namespace(**overrides) -> argparse.Namespace:
    args = dict(policy="llm", specialist="s", surface="main", campaign=None, max_in_flight=1, seed=0, model=MODEL,
                no_lineage=True)
    return argparse.Namespace(**{**args, **overrides})


def test_the_cli_builds_the_policy_with_its_options_and_refuses_a_missing_model_or_endpoint(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    specialist = build_specialist(namespace())
    assert isinstance(specialist, LLMSpecialist) and specialist.model == MODEL and specialist.no_lineage
    assert type(build_specialist(namespace(policy="tpe"))).__name__ == "TPESpecialist"
    with pytest.raises(ValueError, match="needs --model"):
        build_specialist(namespace(model=None))
    monkeypatch.setenv("ARX_LLM_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="ARX_LLM_ATTEMPTS must be at least 1"):
        build_specialist(namespace())
    monkeypatch.delenv("ARX_LLM_ATTEMPTS")
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="needs OPENAI_API_KEY, or OPENAI_BASE_URL"):
        build_specialist(namespace())


# -- the edit checks on their own ------------------------------------------------------------


def rules(surface: str = "main", task: Task = TINY) -> EditRules:
    paths = None if surface == "*" else task.spec.surface(surface).paths
    return EditRules.for_task(task, surface, paths)


def test_a_new_file_inside_a_folder_surface_is_created_and_deletions_are_refused():
    notes = Answer(hypothesis="h", edits=[EditBlock(path="notes/plan.md", search="", replace="try 4\n")])
    diff = apply_answer(notes, BASELINE, rules("notes"))
    assert diff.startswith("--- /dev/null\n+++ b/notes/plan.md\n")
    assert apply_diff(BASELINE, diff)["notes/plan.md"] == "try 4\n"
    gone = "diff --git a/train.py b/train.py\ndeleted file mode 100644\n" + unified_diff(
        "train.py", BASELINE["train.py"], ""
    ).replace("+++ b/train.py", "+++ /dev/null")
    with pytest.raises(AnswerError, match="deleting files is not supported"):
        apply_answer(Answer(hypothesis="h", diff=gone), BASELINE, rules("*"))


def test_a_diff_answer_is_applied_and_published_in_canonical_form():
    new = BASELINE["train.py"].replace("SLEEP = 0.0", "SLEEP = 0.5")
    sloppy = unified_diff("train.py", BASELINE["train.py"], new).rstrip("\n")  # no final newline
    diff = apply_answer(Answer(hypothesis="h", diff=sloppy), BASELINE, rules())
    assert diff == unified_diff("train.py", BASELINE["train.py"], new)


def test_paths_through_a_symlink_in_the_recipe_are_refused(tmp_path):
    folder = tmp_path / "linked"
    shutil.copytree(TINY.folder, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "recipe" / "shared").symlink_to(tmp_path)
    linked = rules("*", Task(folder))
    with pytest.raises(AnswerError, match="points through a symlink"):
        linked.check("shared/evil.py")
    with pytest.raises(AnswerError, match="task or evaluator file"):
        linked.check("task.toml")
    linked.check("train.py")
