"""parameter-golf: the trial's tree is train_gpt.py from the user's checkout plus the trial's edits, with
data/ linked to the user's data. The score and the gates come from the lines the challenge itself reads,
in the format of the repository's train_gpt.py:

    step:13780/20000 val_loss:2.0606 val_bpb:1.2172 train_time:600038ms step_avg:43.54ms
    stopping_early: wallclock_cap train_time:600038ms step:13780/20000
    Code size: 47642 bytes
    Total submission size int8+zlib: 15863489 bytes
    final_int8_zlib_roundtrip val_loss:2.0727 val_bpb:1.2244 eval_time:1401ms
    final_int8_zlib_roundtrip_exact val_loss:2.07269931 val_bpb:1.22436570

or of the later record stacks (`4557/20000 val_loss: 2.8129 val_bpb: 1.0889`, `quantized_ttt val_loss:...
val_bpb:... eval_time:368074ms`). Training ends at the last step or stopping_early line; every line after
it is evaluation of the trained model. The score is the last val_bpb there, which must follow a
round-trip or quantized evaluation; the evaluation time is that of the last evaluation (the one scored).
"""

from __future__ import annotations

import re
from pathlib import Path

from evaluators.official_log import NUMBER, LogFormatError, last_match, lines_matching
from evaluators.user_data import env_folder, link_into, user_folder

CHECKOUT = "ARX_PARAMETER_GOLF_DIR"
DATA = "ARX_PARAMETER_GOLF_DATA"  # default: the checkout's data/
SETUP = "Download the data in your checkout first: python3 data/cached_challenge_fineweb.py --variant sp1024"
TRAIN_BUDGET_S = 600.0

TRAINING = re.compile(r"^(?:stopping_early:|(?:step:)?\d+/\d+ )")
STOPPED = re.compile(r"^stopping_early:.*\btrain_time: ?(\d+)ms step: ?(\d+)/")
STEP = re.compile(rf"^(?:step:)?(\d+)/\d+ .*\btrain_time: ?({NUMBER})(ms|m)\b")
STEP_AVG = re.compile(rf"\bstep_avg: ?({NUMBER})ms")
SCORE = re.compile(rf"\bval_loss: ?({NUMBER}) val_bpb: ?({NUMBER})")
QUANTIZED = re.compile(r"roundtrip|\bquantized\b")
EVAL_TIME = re.compile(rf"\beval_time: ?({NUMBER})ms")
TOTAL_SIZE = re.compile(r"^Total submission size[^:]*: (\d+) bytes")
CODE_SIZE = re.compile(r"^Code size[^:]*: (\d+) bytes")  # the last is the counted one (compressed, if both)
MODEL_SIZE = re.compile(r"^Serialized model [^:]+: (\d+) bytes")  # with a format: compressed, not the raw file


def prepare(run_dir: Path) -> None:
    """Link the challenge's data (datasets/ and tokenizers/) into the trial's tree (executor side)."""
    checkout = env_folder(CHECKOUT)
    data = user_folder(DATA, default=checkout / "data" if checkout else None,
                       needs=("datasets", "tokenizers"), setup=SETUP)
    link_into(run_dir, "data", data)


def parse_log(text: str) -> dict[str, float]:
    lines = text.splitlines()
    end = lines_matching(TRAINING, lines, "training step line (step:N/M ... train_time:...)")[-1][0]
    train_s, steps, step_s = training_time(lines[: end + 1])
    evaluation = lines[end + 1:]
    scored = lines_matching(SCORE, evaluation, "val_bpb after training: the trained model was not evaluated")
    if not any(QUANTIZED.search(evaluation[i][: m.start()]) for i, m in scored):
        raise LogFormatError("the log has no round-trip (or quantized) evaluation after training: the "
                             "compressed model was not scored")
    score_line, score = scored[-1]
    timed = [m for line in evaluation[: score_line + 1] if (m := EVAL_TIME.search(line))]
    if not timed:
        raise LogFormatError("the log has no eval_time:Nms on the evaluation it scores")
    metrics = {
        "val_bpb": float(score[2]),
        "val_loss": float(score[1]),
        "total_bytes": float(last_match(TOTAL_SIZE, lines, "'Total submission size ...: N bytes' line")[1]),
        "train_time_s": train_s,
        # The script checks its wall clock after each step, so a legal run ends within the step that
        # crosses the budget; the accepted records end up to 1.6 average steps past it.
        "train_steps_over_600s": (train_s - TRAIN_BUDGET_S) / step_s,
        "eval_time_s": float(timed[-1][1]) / 1000,
        "steps": float(steps),
    }
    for name, pattern in (("code_bytes", CODE_SIZE), ("model_bytes", MODEL_SIZE)):
        if found := [m for line in lines if (m := pattern.search(line))]:
            metrics[name] = float(found[-1][1])
    return metrics


def training_time(lines: list[str]) -> tuple[float, int, float]:
    """Seconds of training, steps and seconds per step, from the stopping_early line if the wall
    clock stopped the run, else from the last step line."""
    if stopped := [m for line in lines if (m := STOPPED.match(line))]:
        train_s, steps = float(stopped[-1][1]) / 1000, int(stopped[-1][2])
    else:
        step = last_match(STEP, lines, "step line with train_time")
        train_s = float(step[2]) / 1000 if step[3] == "ms" else float(step[2]) * 60
        steps = int(step[1])
    averaged = [m for line in lines if (m := STEP_AVG.search(line))]
    step_s = float(averaged[-1][1]) / 1000 if averaged else train_s / max(steps, 1)
    if not step_s > 0:
        raise LogFormatError(f"training took {train_s}s over {steps} steps: no time per step")
    return train_s, steps, step_s
