"""Knob edits and diffs: what agents write must be what `git apply` in a real repository produces."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agents.edits import (
    EditError,
    apply_diff,
    apply_diffs,
    diff_trees,
    knob_values,
    read_knob,
    set_knob,
    unified_diff,
)
from evaluators.spec import load_task

TASK = load_task("digits-speedrun")
TRAIN = (TASK.recipe_dir / "train.py").read_text()


def git_apply(tmp_path: Path, files: dict[str, str], diff: str) -> dict[str, str]:
    """Apply diff with git in a committed repository; the reference every edit must match."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=repo, check=True)
    subprocess.run([*git, "apply", "--index", "-"], cwd=repo, input=diff.encode(), check=True)
    return {path: (repo / path).read_text() for path in files}


def test_reads_the_recipe_knobs():
    assert read_knob(TRAIN, "EPOCHS") == 30
    assert read_knob(TRAIN, "LR") == 0.01
    assert isinstance(read_knob(TRAIN, "BATCH_SIZE"), int)
    files = {p.name: p.read_text() for p in TASK.recipe_dir.glob("*.py")}
    assert set(knob_values(files, TASK.spec.knobs)) == {k.name for k in TASK.spec.knobs}


def test_set_knob_formats_ints_and_floats_and_touches_only_the_first_line():
    text = "A = 1\nLR = 0.1  # step size\nLR = 0.2\nLRX = 3\n"
    assert set_knob(text, "A", 12) == "A = 12\nLR = 0.1  # step size\nLR = 0.2\nLRX = 3\n"
    lr = 0.1 / 3
    changed = set_knob(text, "LR", lr)
    assert changed == "A = 1\nLR = 0.03333333333333333  # step size\nLR = 0.2\nLRX = 3\n"
    assert read_knob(changed, "LR") == lr
    assert read_knob(set_knob(text, "LR", 1e-05), "LR") == 1e-05


@pytest.mark.parametrize(
    "text, name, message",
    [
        ("B = 1\n", "A", "no line"),
        ("  A = 1\n", "A", "no line"),
        ("A = 'x'\n", "A", "not an int or a float"),
        ("A = True\n", "A", "not an int or a float"),
        ("A = f(1)\n", "A", "not a numeric literal"),
    ],
)
def test_bad_knob_lines_are_clear_errors(text, name, message):
    with pytest.raises(EditError, match=message):
        read_knob(text, name)


def test_set_knob_refuses_missing_knobs_and_bad_values():
    with pytest.raises(EditError, match="no line"):
        set_knob("B = 1\n", "A", 2)
    with pytest.raises(EditError, match="not finite"):
        set_knob("A = 1.0\n", "A", float("nan"))
    with pytest.raises(EditError, match="not an int or a float"):
        set_knob("A = 1\n", "A", True)


def test_knob_edit_round_trips_through_git_apply(tmp_path):
    files = {p.name: p.read_text() for p in TASK.recipe_dir.glob("*.py")}
    new = dict(files)
    new["train.py"] = set_knob(set_knob(files["train.py"], "EPOCHS", 12), "LR", 0.0321)
    new["model.py"] = set_knob(files["model.py"], "HIDDEN", 64)
    diff = diff_trees(files, new)
    assert "--- a/train.py\n+++ b/train.py\n" in diff and "--- a/model.py\n+++ b/model.py\n" in diff
    assert git_apply(tmp_path, files, diff) == new
    assert apply_diff(files, diff) == new


@pytest.mark.parametrize(
    "old, new",
    [
        ("a\nb\n", "a\nc\n"),
        ("a\nb", "a\nc"),  # no newline at the end, before and after
        ("a\nb", "a\nb\n"),  # a newline added at the end
        ("a\nb\n", "a\nb"),  # the last newline removed
        ("", "x = 1\n"),
        ("x = 1\n", ""),
    ],
)
def test_trailing_newlines_agree_with_git(tmp_path, old, new):
    diff = unified_diff("f.py", old, new)
    assert git_apply(tmp_path, {"f.py": old}, diff) == {"f.py": new}
    assert apply_diff({"f.py": old}, diff) == {"f.py": new}


def test_no_change_is_an_empty_diff_and_applies_as_nothing():
    assert unified_diff("train.py", TRAIN, TRAIN) == ""
    assert apply_diff({"train.py": TRAIN}, "") == {"train.py": TRAIN}


def test_a_diff_that_does_not_apply_is_a_clear_error():
    diff = unified_diff("train.py", TRAIN, set_knob(TRAIN, "EPOCHS", 5))
    with pytest.raises(EditError, match="does not apply"):
        apply_diff({"train.py": set_knob(TRAIN, "EPOCHS", 7)}, diff)
    with pytest.raises(EditError, match="does not apply"):
        apply_diff({"train.py": TRAIN}, "this is not a diff\n")


def test_diffs_apply_in_order():
    step1 = set_knob(TRAIN, "EPOCHS", 5)
    step2 = set_knob(step1, "LR", 0.2)
    diffs = [unified_diff("train.py", TRAIN, step1), unified_diff("train.py", step1, step2)]
    assert apply_diffs({"train.py": TRAIN}, diffs) == {"train.py": step2}
