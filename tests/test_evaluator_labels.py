"""Every labelling rule, on the real digits-speedrun spec and real Python tracebacks."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import msgspec
import pytest

from bus.events import ObjectRef, TrialFinished
from evaluators.labels import Evaluation, Traceback, label, parse_traceback
from evaluators.sandbox import OUTPUT_MB
from evaluators.spec import load_task
from projections.views import Incumbent

SPEC = load_task("digits-speedrun").spec  # min wall_s; gates accuracy >= 0.96 and seeds >= 3; train 60s
LIMITS = {"train_s": 60.0, "memory_mb": 4096.0, "file_mb": 64.0}
GOOD = Evaluation(metrics={"accuracy": 0.97, "accuracy_min": 0.96, "seeds": 3.0}, wall_s=0.4)


def finished(**fields) -> TrialFinished:
    base = dict(event_id="f1", campaign_id="c1", trial_id="t1", executor="x1", exit_code=0, wall_s=10.0,
                peak_rss_mb=300.0, limits=LIMITS, artifact=ObjectRef(name="a", size=1, sha256="0" * 64))
    return TrialFinished(**{**base, **fields})


def crash_log(tmp_path, files: dict[str, str]) -> str:
    """The real stderr of a Python run of train.py beside the given files."""
    for name, code in files.items():
        (tmp_path / name).write_text(textwrap.dedent(code))
    run = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    return "step 1\nstep 2\n" + run.stderr


def test_a_crash_names_the_deepest_recipe_frame_and_the_exception(tmp_path):
    log = crash_log(tmp_path, {
        "model.py": """
            import json
            def build(width):
                config = json.loads("{'width': %d}" % width)  # not JSON: fails inside the json module
                return config
        """,
        "train.py": """
            from model import build
            def main():
                build(3)
            main()
        """,
    })
    verdict = label(finished(exit_code=1, log_tail=log), SPEC, None, None, 0.03)
    assert verdict.label == "crash"
    assert verdict.evidence.stage == "train"
    assert verdict.evidence.frame == "model.py:4 in build"  # not json/decoder.py, which is deeper
    assert verdict.evidence.message.startswith("json.decoder.JSONDecodeError: Expecting property name")
    assert verdict.evidence.gate is None
    assert verdict.score is None


def test_code_compiled_from_a_string_is_not_the_recipes_frame(tmp_path):
    # As a dataclass's generated __init__ runs from "<string>": the frame to show is the recipe's line.
    log = crash_log(tmp_path, {"train.py": """
        namespace = {}
        exec("def build():\\n    raise ValueError('bad config')\\n", namespace)
        namespace["build"]()
    """})
    assert 'File "<string>", line 2, in build' in log
    assert parse_traceback(log) == Traceback("train.py:4 in <module>", "ValueError: bad config")


def test_chained_and_syntax_errors(tmp_path):
    chained = crash_log(tmp_path, {"train.py": """
        def load():
            try:
                return {}["lr"]
            except KeyError as exc:
                raise RuntimeError("no learning rate") from exc
        load()
    """})
    assert parse_traceback(chained).frame == "train.py:6 in load"
    assert parse_traceback(chained).message == "RuntimeError: no learning rate"

    syntax = crash_log(tmp_path, {"model.py": "def build(:\n    pass\n", "train.py": "import model\n"})
    trace = parse_traceback(syntax)
    assert trace.frame == "model.py:1"
    assert trace.message == "SyntaxError: invalid syntax"


def test_a_crash_without_traceback_says_how_it_ended():
    verdict = label(finished(exit_code=3, log_tail="loading data\n"), SPEC, None, None, 0.0)
    assert (verdict.label, verdict.evidence.frame, verdict.evidence.message) == ("crash", None, "loading data")
    verdict = label(finished(exit_code=None, signal=signal.SIGSEGV, log_tail=""), SPEC, None, None, 0.0)
    assert verdict.evidence.message == "killed by SIGSEGV"
    assert verdict.evidence.gate is None


def test_a_timeout_is_a_train_budget_overrun():
    verdict = label(finished(timed_out=True, exit_code=None, signal=signal.SIGTERM, wall_s=61.5), SPEC, None, None, 0.0)
    assert verdict.label == "train_budget_overrun"
    ev = verdict.evidence
    assert (ev.gate, ev.measured, ev.limit) == ("train_s", 61.5, 60.0)
    assert [(g.gate, g.passed) for g in verdict.gates] == [("train_s", False)]


@pytest.mark.parametrize("fields", [
    dict(exit_code=1, log_tail='  File "/run/train.py", line 9, in main\n    x = [0] * 10**12\nMemoryError\n'),
    dict(exit_code=None, signal=signal.SIGKILL, peak_rss_mb=4000.0, log_tail="epoch 3\n"),
    dict(exit_code=None, signal=signal.SIGABRT, log_tail="terminate called after throwing 'std::bad_alloc'\n"),
])
def test_hitting_the_memory_limit_is_a_crash_at_the_memory_gate(fields):
    verdict = label(finished(**fields), SPEC, None, None, 0.0)
    assert verdict.label == "crash"
    assert (verdict.evidence.gate, verdict.evidence.limit) == ("memory_mb", 4096.0)


def test_a_kill_far_below_the_memory_limit_is_a_plain_crash():
    verdict = label(finished(exit_code=None, signal=signal.SIGKILL, peak_rss_mb=200.0, log_tail=""), SPEC, None,
                    None, 0.0)
    assert (verdict.label, verdict.evidence.gate) == ("crash", None)


@pytest.mark.parametrize("fields", [
    dict(exit_code=None, signal=signal.SIGXFSZ, log_tail="saving\n"),
    dict(exit_code=1, log_tail='  File "/run/train.py", line 40, in main\n    f.write(b)\n'
                               "OSError: [Errno 27] File too large\n"),
])
def test_hitting_the_file_size_limit_is_a_crash_at_the_file_gate(fields):
    verdict = label(finished(**fields), SPEC, None, None, 0.0)
    assert verdict.label == "crash"
    assert (verdict.evidence.gate, verdict.evidence.limit) == ("file_mb", 64.0)


def test_a_missing_artifact_is_a_crash_at_the_artifact_stage():
    evaluation = Evaluation(failed="artifact", error="the run produced no artifact")
    verdict = label(finished(), SPEC, evaluation, None, 0.0)
    assert (verdict.label, verdict.evidence.stage, verdict.evidence.message) == (
        "crash", "artifact", "the run produced no artifact")


def test_predict_raising_is_a_crash_at_the_evaluate_stage(tmp_path):
    log = crash_log(tmp_path, {"train.py": """
        def forward(x):
            return x @ [[1.0]]
        forward([[1.0, 2.0]])
    """})
    verdict = label(finished(), SPEC, Evaluation(failed="evaluate", error=log, wall_s=0.2), None, 0.0)
    assert (verdict.label, verdict.evidence.stage, verdict.evidence.frame) == ("crash", "evaluate", "train.py:3 in forward")
    assert verdict.evidence.message.startswith("TypeError: unsupported operand type(s) for @")
    assert [(g.gate, g.passed) for g in verdict.gates] == [("train_s", True), ("eval_s", True)]

    killed = Evaluation(failed="evaluate", error="sandbox ended without an answer\n", signal=signal.SIGXFSZ)
    assert label(finished(), SPEC, killed, None, 0.0).evidence.limit == OUTPUT_MB


def test_an_evaluation_over_its_budget_is_an_eval_budget_overrun():
    verdict = label(finished(), SPEC, Evaluation(failed="eval_budget", wall_s=30.0), None, 0.0)
    assert verdict.label == "eval_budget_overrun"
    assert (verdict.evidence.gate, verdict.evidence.measured, verdict.evidence.limit) == ("eval_s", 30.0, 30.0)


def test_a_missed_gate_gives_its_label_and_every_gate_is_recorded():
    evaluation = Evaluation(metrics={"accuracy": 0.91, "seeds": 3.0}, wall_s=0.3)
    verdict = label(finished(wall_s=4.0), SPEC, evaluation, Incumbent("t0", 9.0), 0.03)
    assert verdict.label == "disqualified"
    assert verdict.score == 4.0  # the score is kept, the trial is not
    assert (verdict.evidence.gate, verdict.evidence.measured, verdict.evidence.limit) == ("accuracy", 0.91, 0.96)
    assert verdict.evidence.message == "accuracy 0.91, required >= 0.96"
    assert [(g.gate, g.passed, g.measured) for g in verdict.gates] == [
        ("train_s", True, 4.0), ("eval_s", True, 0.3), ("accuracy", False, 0.91), ("seeds", True, 3.0)]

    unmeasured = label(finished(), SPEC, Evaluation(metrics={"accuracy": 0.99}), None, 0.0)
    assert (unmeasured.label, unmeasured.evidence.gate) == ("disqualified", "seeds")
    assert unmeasured.gates[-1].detail == "seeds was not measured"


@pytest.mark.parametrize("score, expected", [(9.0, "keep"), (9.8, "within_noise"), (10.0, "discard"),
                                             (10.5, "discard")])
def test_lower_is_better_against_the_incumbent_and_the_noise(score, expected):
    verdict = label(finished(wall_s=score), SPEC, GOOD, Incumbent("t0", 10.0), 0.03)
    assert (verdict.label, verdict.score) == (expected, score)
    assert verdict.evidence.limit == pytest.approx(9.7)  # a keep must beat 10.0 - 3%


@pytest.mark.parametrize("accuracy, expected", [(0.99, "keep"), (0.975, "within_noise"), (0.97, "discard"),
                                                (0.965, "discard")])
def test_higher_is_better_against_the_incumbent_and_the_noise(accuracy, expected):
    spec = msgspec.structs.replace(SPEC, direction="max", score="accuracy")
    evaluation = Evaluation(metrics={"accuracy": accuracy, "seeds": 3.0})
    verdict = label(finished(), spec, evaluation, Incumbent("t0", 0.97), 0.01)
    assert (verdict.label, verdict.score) == (expected, accuracy)


def test_the_first_scored_trial_is_kept():
    assert label(finished(), SPEC, GOOD, None, 0.03).label == "keep"


def test_a_non_finite_score_is_a_crash():
    spec = msgspec.structs.replace(SPEC, score="accuracy_min")
    evaluation = Evaluation(metrics={"accuracy": 0.97, "accuracy_min": float("nan"), "seeds": 3.0})
    assert label(finished(), spec, evaluation, None, 0.0).label == "crash"


def test_harness_mistakes_are_errors_not_labels():
    with pytest.raises(ValueError, match="no evaluation"):
        label(finished(), SPEC, None, None, 0.0)
    spec = msgspec.structs.replace(SPEC, score="loss")
    with pytest.raises(ValueError, match="scores 'loss'"):
        label(finished(), spec, GOOD, None, 0.0)
