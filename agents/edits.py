"""Edits to a recipe: read and set numeric knobs, write unified diffs, apply them exactly as git does.

A tree is a dict of relative path -> text. Texts are decoded with surrogateescape so that any bytes
survive a round trip through a tree unchanged.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

NO_NEWLINE = "\\ No newline at end of file\n"
GIT_TIMEOUT_S = 30


class EditError(ValueError):
    """A knob that is not there or not a number, or a diff that does not apply."""


def _knob_line(name: str) -> re.Pattern:
    # `NAME = value  # comment` at the start of a line; the value is everything up to a comment.
    head = rf"(?P<head>{re.escape(name)}[ \t]*=[ \t]*)"
    return re.compile(rf"^{head}(?P<value>[^#\n]*?)(?P<tail>[ \t\r]*(#[^\n]*)?)$", re.M)


def read_knob(text: str, name: str) -> int | float:
    """The value of the first `NAME = number` line in text."""
    match = _knob_line(name).search(text)
    if match is None:
        raise EditError(f"knob {name}: no line `{name} = ...` at the start of a line")
    raw = match["value"]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise EditError(f"knob {name}: {raw!r} is not a numeric literal") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EditError(f"knob {name}: {raw!r} is not an int or a float")
    return value


def format_value(value: int | float) -> str:
    """Ints as ints, floats with repr precision (so reading the text back gives the same float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EditError(f"knob value {value!r} is not an int or a float")
    if isinstance(value, float) and not math.isfinite(value):
        raise EditError(f"knob value {value!r} is not finite")
    return repr(value)


def set_knob(text: str, name: str, value: int | float) -> str:
    """Text with the first `NAME = ...` line set to value; any trailing comment is kept."""
    pattern = _knob_line(name)
    if pattern.search(text) is None:
        raise EditError(f"knob {name}: no line `{name} = ...` at the start of a line")
    formatted = format_value(value)
    return pattern.sub(lambda m: f"{m['head']}{formatted}{m['tail']}", text, count=1)


def knob_values(files: Mapping[str, str], knobs: Iterable) -> dict[str, int | float]:
    """Current values of the knobs (evaluators.spec.Knob) whose file and line exist in the tree."""
    values = {}
    for knob in knobs:
        text = files.get(knob.path)
        if text is None:
            continue
        try:
            values[knob.name] = read_knob(text, knob.name)
        except EditError:
            continue
    return values


def unified_diff(path: str, old_text: str | None, new_text: str | None) -> str:
    """A git-applyable diff of one file (a/ and b/ prefixes; None: the file is added or deleted, through
    /dev/null); empty when the texts are equal."""
    if old_text == new_text:
        return ""
    lines = difflib.unified_diff(
        (old_text or "").splitlines(keepends=True), (new_text or "").splitlines(keepends=True),
        f"a/{path}" if old_text is not None else "/dev/null", f"b/{path}" if new_text is not None else "/dev/null",
    )
    # difflib leaves a last line without its newline as is; git wants the line ended plus a marker.
    return "".join(line if line.endswith("\n") else line + "\n" + NO_NEWLINE for line in lines)


def diff_trees(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """One diff for every file that changed between two trees with the same paths."""
    if old.keys() != new.keys():
        raise EditError(f"diff_trees compares trees with the same files, not {sorted(old)} and {sorted(new)}")
    return tree_diff(old, new)


def tree_diff(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """A git-applyable diff between two trees, with files added or deleted through /dev/null."""
    return "".join(unified_diff(path, old.get(path), new.get(path)) for path in sorted(set(old) | set(new)))


def apply_diff(files: Mapping[str, str], diff: str) -> dict[str, str]:
    """The tree after `git apply` of diff; raises EditError when git refuses it."""
    return apply_diffs(files, [diff])


def apply_diffs(files: Mapping[str, str], diffs: Iterable[str]) -> dict[str, str]:
    """Apply diffs in order with git itself (so agents agree with executors), in one scratch tree."""
    diffs = [d for d in diffs if d]
    if not diffs:
        return dict(files)
    with tempfile.TemporaryDirectory(prefix="arx-apply-") as tmp:
        root = Path(tmp)
        # A repository of its own, so that git never reads an enclosing one.
        _git(root, ["init", "-q"])
        for path, text in files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(text.encode("utf-8", "surrogateescape"))
        for number, diff in enumerate(diffs, 1):
            try:
                _git(root, ["apply", "--whitespace=nowarn", "-"], diff)
            except EditError as exc:
                raise EditError(f"diff {number} of {len(diffs)} does not apply: {exc}") from None
        return read_tree(root)


def read_tree(root: Path) -> dict[str, str]:
    """Every file under root (outside .git) as relative path -> text."""
    return {
        str(path.relative_to(root)): path.read_bytes().decode("utf-8", "surrogateescape")
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(root).parts
    }


def _git(cwd: Path, args: list[str], stdin: str = "") -> str:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            input=stdin.encode("utf-8", "surrogateescape"),
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise EditError(f"git {args[0]} took longer than {GIT_TIMEOUT_S}s") from None
    if result.returncode != 0:
        raise EditError(result.stderr.decode(errors="replace").strip() or f"git {args[0]} failed")
    return result.stdout.decode("utf-8", "surrogateescape")
