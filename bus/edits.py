"""Which paths a trial's unified diff touches, and whether the trial may touch them: the one home of
the surface and path rules that agents (before proposing), executors (before running) and the audit
(after the fact) apply.

Pure functions: the same diff and surface give the same verdict on every host, before any git runs.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from typing import NamedTuple

ALL_SURFACES = "*"  # the surface of a specialist that may edit every path that is not frozen
BASELINE_SURFACE = "baseline"  # the campaign's first trial: the bundle as it is, no edit allowed
ANY_PATH = None  # surface_paths value of the "*" surface: every path that is not frozen
_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_RENAME_OR_COPY = ("rename from ", "rename to ", "copy from ", "copy to ")
_MODE = re.compile(r"^(?:new file mode|deleted file mode|old mode|new mode|index \S+) (\d{6})$")
_UNSAFE_MODES = {"120000": "symlinks are not allowed", "160000": "submodules are not allowed"}


class EditProblem(NamedTuple):
    reason: str
    path: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class InvalidEdit(Exception):
    """A trial's edit that cannot or may not be applied; `path` names the offending file if known."""

    def __init__(self, reason: str, path: str | None = None):
        super().__init__(str(EditProblem(reason, path)))
        self.reason = reason
        self.path = path


def surface_paths(surfaces: Mapping[str, list[str]], surface: str) -> list[str] | None:
    """The paths a trial on `surface` may edit, given the task's surfaces (name -> paths): ANY_PATH for
    "*", none for the baseline; a ValueError that names the task's surfaces for an unknown one."""
    if surface == ALL_SURFACES:
        return ANY_PATH
    if surface == BASELINE_SURFACE:
        return []
    if surface not in surfaces:
        raise ValueError(f"no surface {surface!r} (the task has {sorted(surfaces)})")
    return surfaces[surface]


def path_in(path: str, paths: list[str] | None) -> bool:
    """Is path one of paths (ANY_PATH: every path)? A path ending in "/" covers a whole folder."""
    return paths is ANY_PATH or any(path.startswith(p) if p.endswith("/") else path == p for p in paths)


def check_edit(diff: str, allowed: list[str] | None, frozen_paths: list[str]) -> list[EditProblem]:
    """Every reason this diff may not be applied; empty when it may.

    A path in `allowed` (a surface's paths) or frozen_paths that ends in "/" is a folder prefix, any
    other is one file. allowed=ANY_PATH (None) allows every path that is not frozen.
    """
    paths, problems = diff_paths(diff)
    if diff.strip() and not paths and not problems:
        problems.append(EditProblem("the diff names no files"))
    for path in dict.fromkeys(paths):
        reason = _unsafe(path)
        if reason is None and path_in(path, frozen_paths):
            reason = "is frozen"
        if reason is None and not path_in(path, allowed):
            reason = f"is outside the surface's paths {allowed}"
        if reason:
            problems.append(EditProblem(reason, path))
    return problems


def diff_paths(diff: str) -> tuple[list[str], list[EditProblem]]:
    """The repository paths a diff names (a/ and b/ prefixes removed), and what could not be read.

    Hunk bodies are skipped by their line counts, so a removed line that starts with "-- " is not
    mistaken for a file header.
    """
    paths: list[str] = []
    problems: list[EditProblem] = []
    old_left = new_left = 0
    for line in diff.splitlines():
        if old_left > 0 or new_left > 0:
            tag = line[:1]
            if tag in (" ", ""):
                old_left, new_left = old_left - 1, new_left - 1
                continue
            if tag == "-":
                old_left -= 1
                continue
            if tag == "+":
                new_left -= 1
                continue
            if tag == "\\":  # "\ No newline at end of file"
                continue
            old_left = new_left = 0  # a short hunk: git apply will say so; read the line as a header
        if hunk := _HUNK.match(line):
            old_left, new_left = (int(n) if n is not None else 1 for n in hunk.groups())
        elif line.startswith(("--- ", "+++ ")):
            _add_prefixed(line[4:].split("\t")[0], paths, problems)
        elif line.startswith("diff --git "):
            _add_git_header(line[len("diff --git ") :], paths, problems)
        elif line.startswith(_RENAME_OR_COPY):
            paths.append(_unquote(line.split(" ", 2)[2]))
        elif line.startswith("GIT binary patch") or (line.startswith("Binary files ") and line.endswith(" differ")):
            problems.append(EditProblem("binary patches are not allowed", paths[-1] if paths else None))
        elif (mode := _MODE.match(line)) and mode.group(1) in _UNSAFE_MODES:
            problems.append(EditProblem(_UNSAFE_MODES[mode.group(1)], paths[-1] if paths else None))
    return paths, problems


def _add_prefixed(raw: str, paths: list[str], problems: list[EditProblem]) -> None:
    name = _unquote(raw.strip())
    if name == "/dev/null":
        return
    if name.startswith(("a/", "b/")):
        paths.append(name[2:])
    elif name.startswith("/"):
        paths.append(name)  # reported as absolute by check_edit
    else:
        problems.append(EditProblem("file names in the diff must start with a/ or b/", name))


def _add_git_header(rest: str, paths: list[str], problems: list[EditProblem]) -> None:
    """`diff --git a/X b/Y`: X == Y unless renamed, and a rename also has `rename from/to` lines."""
    if rest.startswith('"'):
        names = re.findall(r'"(?:[^"\\]|\\.)*"|\S+', rest)
    else:
        half = (len(rest) - 1) // 2
        names = [rest[:half], rest[half + 1 :]] if rest[half : half + 1] == " " else rest.split(" ")
    if len(names) != 2:
        problems.append(EditProblem(f"cannot read the file names in 'diff --git {rest}'"))
        return
    for name in names:
        _add_prefixed(name, paths, problems)


def _unquote(name: str) -> str:
    """git C-quotes names with unusual characters: "a/t\\303\\244st.py"."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return codecs.escape_decode(name[1:-1].encode())[0].decode("utf-8", "replace")
    return name


def _unsafe(path: str) -> str | None:
    if path.startswith("/"):
        return "absolute paths are not allowed"
    parts = path.split("/")
    if ".." in parts:
        return "'..' is not allowed in paths"
    if any(part in ("", ".") for part in parts) or "\\" in path:
        return "paths must be plain relative names (no '.', empty parts or backslashes)"
    if any(part.lower() == ".git" for part in parts):
        return ".git is not part of a recipe"
    return None


