"""nanochat-d12: the trial's tree is nanochat's package and base_train/base_eval scripts from the user's
checkout plus the trial's edits. The trial runs with HOME at its tree, so nanochat's base dir is the
tree's .cache/nanochat: prepare() links the user's data shards, tokenizer and CORE eval bundle into it,
and the checkpoints the run writes stay in the tree. The metrics come from base_train's own lines:

    Model config:
    {
      "n_layer": 12,
      ...
    }
    Evaluating: hellaswag_zeroshot (0-shot, type: multiple_choice)... accuracy: 0.3780 | centered: 0.1707 | time: 9.12s
    Step 02205 | CORE metric: 0.1402
    Total training time: 4.95m
    Minimum validation bpb: 0.854102

(nanochat's report.md carried the same numbers until the report was removed upstream; the stdout
lines are what the executor captures.)
"""

from __future__ import annotations

import re
from pathlib import Path

from evaluators.official_log import NUMBER, LogFormatError, last_match, lines_matching
from evaluators.user_data import link_into, user_folder

DATA = "ARX_NANOCHAT_DATA"  # nanochat's base dir; default ~/.cache/nanochat
SHARD_DIRS = ("base_data_climbmix", "base_data")  # the current data set, and the one before it
LINKED = (*SHARD_DIRS, "tokenizer", "eval_bundle")
SETUP = ("Make them in your checkout first: python -m nanochat.dataset -n 170; python -m scripts.tok_train; "
         "and unpack eval_bundle.zip there (scripts/base_eval.py downloads it)")

CORE = re.compile(rf"CORE metric: ({NUMBER})\s*$")
TRAINING_TIME = re.compile(rf"^Total training time: ({NUMBER})m\s*$")
MODEL_CONFIG = re.compile(r"^Model config:")
N_LAYER = re.compile(r'"n_layer":\s*(\d+)')
CORE_TASK = re.compile(rf"^Evaluating: (\S+) \(.*accuracy: ({NUMBER}) \| centered: ({NUMBER})")
MIN_VAL_BPB = re.compile(rf"^Minimum validation bpb: ({NUMBER})")


def prepare(run_dir: Path) -> None:
    """Give the trial a nanochat base dir reading the user's data (executor side)."""
    base = user_folder(DATA, default=Path.home() / ".cache" / "nanochat", needs=("tokenizer", "eval_bundle"),
                       setup=SETUP)
    if not any((base / name).is_dir() for name in SHARD_DIRS):
        raise ValueError(f"{DATA}: {base}: it has no {' or '.join(SHARD_DIRS)}. {SETUP}")
    for name in LINKED:
        if (base / name).exists():
            link_into(run_dir, f".cache/nanochat/{name}", base / name)


def parse_log(text: str) -> dict[str, float]:
    lines = text.splitlines()
    metrics = {
        "core_metric": float(last_match(CORE, lines, "'CORE metric: X' line: the final CORE evaluation did not run")[1]),
        "training_time_s": 60 * float(last_match(TRAINING_TIME, lines, "'Total training time: Xm' line")[1]),
        "depth": model_depth(lines),
    }
    for line in lines:
        if task := CORE_TASK.match(line):
            metrics[f"centered_{task[1]}"] = float(task[3])
    if found := [m for line in lines if (m := MIN_VAL_BPB.match(line))]:
        metrics["val_bpb"] = float(found[-1][1])
    return metrics


def model_depth(lines: list[str]) -> float:
    """n_layer of the JSON printed after the last 'Model config:' line."""
    start = lines_matching(MODEL_CONFIG, lines, "'Model config:' line")[-1][0]
    for line in lines[start + 1:]:
        if depth := N_LAYER.search(line):
            return float(depth[1])
        if line.startswith("}"):
            break
    raise LogFormatError("the printed model config has no n_layer")
