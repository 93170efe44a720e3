"""The official-task adapters (parameter-golf, nanochat-d12, airbench96) without a GPU or a network:
their specs, their parsers on logs in the official formats (tests/fixtures/), the official gates
through the evaluator's own labels, the bundle of a user's checkout and the data prepare() links in."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import msgspec
import pytest

from bus.connection import Bus
from bus.events import TrialFinished
from evaluators import labels
from evaluators.official_log import LogFormatError, evaluate_log, score_log
from evaluators.spec import load_spec, load_task

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLF = load_task("parameter-golf")
NANOCHAT = load_task("nanochat-d12")
AIRBENCH = load_task("airbench96")
GOLF_LOG = (FIXTURES / "parameter_golf" / "baseline.log").read_text()
NANOCHAT_LOG = (FIXTURES / "nanochat_d12" / "base_train.log").read_text()
AIRBENCH_LOG = (FIXTURES / "airbench96" / "runs25.log").read_text()


def verdict(task, log: str) -> labels.Verdict:
    """The evaluator's verdict on a run that exited cleanly and printed `log`."""
    finished = TrialFinished(event_id="e", campaign_id="c", trial_id="t", executor="x", exit_code=0, wall_s=900.0)
    return labels.label(finished, task.spec, score_log(task, log.encode()), None, task.spec.noise)


def replace_line(log: str, old: str, new: str) -> str:
    assert log.count(old) == 1, old
    return log.replace(old, new)


@pytest.mark.parametrize("task", [GOLF, NANOCHAT, AIRBENCH], ids=lambda t: t.name)
def test_the_specs_run_an_external_checkout_on_gpus_and_score_its_log(task, monkeypatch):
    spec = task.spec
    assert (spec.scored_from, spec.requires, spec.budgets.memory_mb) == ("log", ["cuda"], 0)
    assert spec.recipe_source.startswith("env:ARX_") and spec.include
    monkeypatch.delenv(spec.recipe_source.removeprefix("env:"), raising=False)
    with pytest.raises(ValueError, match=spec.recipe_source.removeprefix("env:")):
        task.bundle()  # the checkout is needed only where a campaign starts


def test_parameter_golf_reads_the_round_trip_score_size_and_timings():
    metrics = GOLF.module().parse_log(GOLF_LOG)
    assert metrics["val_bpb"] == 1.22455281 and metrics["val_loss"] == 2.07314702  # the _exact line
    assert (metrics["total_bytes"], metrics["code_bytes"], metrics["model_bytes"]) == (15860952, 47642, 15813310)
    assert (metrics["train_time_s"], metrics["eval_time_s"], metrics["steps"]) == (600.027, 1.398, 13759)
    assert metrics["train_steps_over_600s"] == pytest.approx(0.027 / 0.04361)
    assert verdict(GOLF, GOLF_LOG).label == "keep"


def test_parameter_golf_reads_the_later_record_format():
    log = "\n".join([
        "4500/20000 train_loss: 2.7634 train_time: 9.7m tok/s: 6106541",
        "4557/20000 val_loss: 2.8129 val_bpb: 1.0889",
        "stopping_early: wallclock_cap train_time: 588119ms step: 4557/20000",
        "pre-quantization post-ema val_loss:2.80977929 val_bpb:1.08775313 eval_time:7438ms",
        "Code size: 16594 bytes",
        "Total submission size quantized+brotli: 15992919 bytes",
        "quantized val_loss:2.84004242 val_bpb:1.09946892 eval_time:25390ms",
        "quantized_ttt val_loss:2.79241542 val_bpb:1.08103103 eval_time:368074ms",
    ])
    metrics = GOLF.module().parse_log(log)
    assert (metrics["val_bpb"], metrics["total_bytes"], metrics["eval_time_s"]) == (1.08103103, 15992919, 368.074)
    assert (metrics["train_time_s"], metrics["steps"]) == (588.119, 4557)
    assert metrics["train_steps_over_600s"] < 0


@pytest.mark.parametrize(("old", "new", "label", "gate"), [
    ("Total submission size int8+zlib: 15860952 bytes", "Total submission size int8+zlib: 16000001 bytes",
     "size_blocked", "total_bytes"),
    ("stopping_early: wallclock_cap train_time:600027ms", "stopping_early: wallclock_cap train_time:612000ms",
     "train_budget_overrun", "train_steps_over_600s"),
    ("val_bpb:1.2246 eval_time:1398ms", "val_bpb:1.2246 eval_time:600400ms", "eval_budget_overrun", "eval_time_s"),
])
def test_parameter_golf_gates(old, new, label, gate):
    result = verdict(GOLF, replace_line(GOLF_LOG, old, new))
    assert (result.label, result.evidence.gate) == (label, gate)
    assert result.score == 1.22455281  # scored, then stopped by the gate
    assert [g.gate for g in result.gates if not g.passed] == [gate]


@pytest.mark.parametrize(("old", "new", "missing"), [
    ("_roundtrip", "_eval", "round-trip"),  # both final lines
    (" eval_time:1398ms", "", "eval_time"),
    ("Total submission size", "Total size", "Total submission size"),  # the raw and the compressed
])
def test_a_parameter_golf_log_without_an_official_line_is_a_crash_that_names_it(old, new, missing):
    assert old in GOLF_LOG
    log = GOLF_LOG.replace(old, new)
    with pytest.raises(LogFormatError, match=missing):
        GOLF.module().parse_log(log)
    result = verdict(GOLF, log)
    assert (result.label, result.evidence.stage) == ("crash", "evaluate")
    assert missing in result.evidence.message


def test_a_diverged_parameter_golf_run_is_a_crash_on_its_score():
    log = replace_line(GOLF_LOG, "val_loss:2.07314702 val_bpb:1.22455281", "val_loss:nan val_bpb:nan")
    result = verdict(GOLF, log)
    assert (result.label, result.evidence.message) == ("crash", "score val_bpb is nan")


def test_nanochat_reads_core_training_time_and_depth():
    metrics = NANOCHAT.module().parse_log(NANOCHAT_LOG)
    assert (metrics["core_metric"], metrics["depth"], metrics["val_bpb"]) == (0.1421, 12, 0.854102)
    assert metrics["training_time_s"] == pytest.approx(4.93 * 60)
    assert len([name for name in metrics if name.startswith("centered_")]) == 22
    assert verdict(NANOCHAT, NANOCHAT_LOG).label == "keep"


@pytest.mark.parametrize(("old", "new", "label", "gate"), [
    ('"n_layer": 12,', '"n_layer": 11,', "disqualified", "depth"),
    ('"n_layer": 12,', '"n_layer": 16,', "disqualified", "depth"),
    ("Total training time: 4.93m", "Total training time: 10.02m", "train_budget_overrun", "training_time_s"),
])
def test_nanochat_gates(old, new, label, gate):
    result = verdict(NANOCHAT, replace_line(NANOCHAT_LOG, old, new))
    assert (result.label, result.evidence.gate, result.score) == (label, gate, 0.1421)


def test_nanochat_without_the_final_core_evaluation_is_a_crash():
    result = verdict(NANOCHAT, replace_line(NANOCHAT_LOG, "Step 02205 | CORE metric: 0.1421\n", ""))
    assert result.label == "crash" and "CORE metric" in result.evidence.message


def test_airbench_reads_mean_accuracy_and_time_over_runs():
    metrics = AIRBENCH.module().parse_log(AIRBENCH_LOG)
    assert (metrics["runs"], metrics["accuracy_min"]) == (25, 0.9573)
    assert metrics["accuracy"] == pytest.approx(0.96034)
    assert metrics["first_run_time_s"] == 121.1348  # it compiles: left out of the score
    assert metrics["time_s"] == pytest.approx(27.30, abs=0.05)
    assert verdict(AIRBENCH, AIRBENCH_LOG).label == "keep"


def test_airbench_below_96_percent_or_too_few_runs_is_disqualified():
    low = AIRBENCH_LOG.replace("|       0.96", "|       0.95")
    result = verdict(AIRBENCH, low)
    assert (result.label, result.evidence.gate) == ("disqualified", "accuracy")
    assert result.evidence.measured < 0.96
    runs = AIRBENCH_LOG.split("Main model parameters")
    short = verdict(AIRBENCH, "Main model parameters".join(runs[:11]))  # the header and 10 runs
    assert (short.label, short.evidence.gate, short.evidence.measured) == ("disqualified", "runs", 10)


def test_airbench_without_a_finished_run_is_a_crash():
    header = "\n".join(AIRBENCH_LOG.splitlines()[:3])
    result = verdict(AIRBENCH, header)
    assert result.label == "crash" and "no eval rows" in result.evidence.message


@pytest.mark.anyio
async def test_the_evaluator_reads_the_log_the_executor_stored(arx_env):
    async with await Bus.connect(role="admin") as bus:
        ref = await bus.put_object("logs/c/t-1.log", GOLF_LOG.encode())
        stored = TrialFinished(event_id="e", campaign_id="c", trial_id="t", executor="x", exit_code=0, log=ref)
        evaluation = await evaluate_log(bus, GOLF, stored)
        without = await evaluate_log(bus, GOLF, TrialFinished(event_id="e", campaign_id="c", trial_id="t", executor="x"))
    assert evaluation.metrics["val_bpb"] == 1.22455281
    assert (without.failed, without.error) == ("artifact", "the run left no log to score")


# --- the user's checkout and data ---------------------------------------------------------------------


def bundled_files(bundle: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bundle))) as tar:
        return sorted(m.name for m in tar.getmembers())


def test_a_campaign_bundles_only_the_included_files_of_the_checkout(tmp_path, monkeypatch):
    checkout = tmp_path / "nanochat"
    for name in ["nanochat/gpt.py", "nanochat/core_eval.py", "scripts/base_train.py", "scripts/base_eval.py",
                 "scripts/chat_sft.py", "README.md", ".venv/lib/site.py", "nanochat/__pycache__/gpt.cpython-311.pyc"]:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text(name)
    monkeypatch.setenv("ARX_NANOCHAT_DIR", str(checkout))
    assert bundled_files(NANOCHAT.bundle()) == [
        "nanochat/core_eval.py", "nanochat/gpt.py", "scripts/base_eval.py", "scripts/base_train.py"]
    (checkout / "scripts" / "base_eval.py").unlink()
    with pytest.raises(ValueError, match="scripts/base_eval.py.*matches no file"):
        NANOCHAT.bundle()


def test_prepare_links_the_users_data_or_says_how_to_make_it(tmp_path, monkeypatch):
    checkout = tmp_path / "parameter-golf"
    monkeypatch.setenv("ARX_PARAMETER_GOLF_DIR", str(checkout))
    monkeypatch.delenv("ARX_PARAMETER_GOLF_DATA", raising=False)
    (checkout / "data" / "datasets").mkdir(parents=True)
    with pytest.raises(ValueError, match="tokenizers.*cached_challenge_fineweb"):
        GOLF.module().prepare(tmp_path / "run")
    (checkout / "data" / "tokenizers").mkdir()
    (tmp_path / "run").mkdir()
    GOLF.module().prepare(tmp_path / "run")
    assert (tmp_path / "run" / "data").resolve() == (checkout / "data").resolve()

    base = tmp_path / "cache-nanochat"
    for name in ("base_data_climbmix", "tokenizer", "eval_bundle"):
        (base / name).mkdir(parents=True)
    monkeypatch.setenv("ARX_NANOCHAT_DATA", str(base))
    NANOCHAT.module().prepare(tmp_path / "run")
    linked = sorted(p.name for p in (tmp_path / "run" / ".cache" / "nanochat").iterdir())
    assert linked == ["base_data_climbmix", "eval_bundle", "tokenizer"]

    monkeypatch.setenv("ARX_AIRBENCH_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="ARX_AIRBENCH_DATA.*not a folder"):
        AIRBENCH.module().prepare(tmp_path / "run")


@pytest.mark.parametrize(("line", "field"), [
    ('scored_from = "stdout"', "scored_from"),
    ('recipe_source = "/home/me/golf"', "recipe_source"),
    ('requires = ["tpu"]', "requires"),
    ('include = ["../secrets/*"]', "include"),
])
def test_a_broken_official_task_spec_names_its_field(tmp_path, line, field):
    text = (GOLF.folder / "task.toml").read_text()
    key = line.split(" = ")[0]
    text = "\n".join(row for row in text.splitlines() if not row.startswith(f"{key} = "))
    path = tmp_path / "task.toml"
    path.write_text(f"{line}\n{text}")
    with pytest.raises(ValueError, match=f"task.toml: {field}"):
        load_spec(path)


@pytest.mark.parametrize(("line", "name"), [
    ('env = { HOME = "/root" }', "HOME"),
    ('env = { ARX_FENCE = "" }', "ARX_FENCE"),
    ('env = { LD_PRELOAD = "/tmp/x.so" }', "LD_PRELOAD"),
    ('env = { PYTHONPATH = "/tmp" }', "PYTHONPATH"),
    ('env = { CUDA_VISIBLE_DEVICES = "0,1,2,3" }', "CUDA_VISIBLE_DEVICES"),
    ('env = { "TWO WORDS" = "1" }', "TWO WORDS"),
])
def test_a_task_may_not_set_the_variables_of_the_sandbox(tmp_path, line, name):
    path = tmp_path / "task.toml"
    path.write_text(f"{line}\n{(GOLF.folder / 'task.toml').read_text()}")
    with pytest.raises(ValueError, match=f"task.toml: env: '{name}' is not a variable a task may set"):
        load_spec(path)
    short = (GOLF.folder / "task.toml").read_text().replace('[short.env]\n', '[short.env]\nHOME = "/"\n')
    path.write_text(short)
    with pytest.raises(ValueError, match="short.env: 'HOME'"):
        load_spec(path)


@pytest.mark.parametrize("task", [GOLF, NANOCHAT, AIRBENCH], ids=lambda t: t.name)
def test_a_short_run_changes_only_the_recipes_own_settings_and_the_wall_clock(task):
    full, short = task.spec, task.spec.shortened()
    assert short.env == full.short.env and short.command == full.command + full.short.args
    assert short.budgets.train_s == full.short.train_s < full.budgets.train_s
    unchanged = ("metric", "direction", "score", "gates", "surfaces", "frozen", "include", "requires", "noise")
    assert all(getattr(short, name) == getattr(full, name) for name in unchanged)
    # What a campaign records is final: a short spec cannot be shortened again.
    with pytest.raises(ValueError, match="has no \\[short\\] table"):
        short.shortened()


def test_the_recipe_runs_with_the_variables_of_its_spec(tmp_path):
    from executors.sandbox import Limits
    from executors.worker import run_recipe

    show = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('ITERATIONS', 'HOME', 'ARX_SMOKE')}))"
    spec = msgspec.structs.replace(GOLF.spec.shortened(), command=["{python}", "-c", show])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for extra, smoke in (({}, None), ({"ARX_SMOKE": "1"}, "1")):
        result = run_recipe(spec, run_dir, Limits(wall_s=30, memory_mb=0, file_mb=8), tmp_path / "log",
                            home=tmp_path / "home", env=extra)
        assert result.exit_code == 0, result.log.read_text()
        seen = json.loads(result.log.read_text().splitlines()[-1])
        assert seen == {"ITERATIONS": "200", "HOME": str(run_dir.resolve()), "ARX_SMOKE": smoke}
