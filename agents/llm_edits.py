"""A model's answer: parse the JSON, check every path against the surface, apply the edit locally.

The result is a canonical unified diff made from the trees before and after, so what is published is
exactly what was checked, whatever form (SEARCH/REPLACE blocks or a diff) the model chose. Every
refusal is an AnswerError whose message is fed back to the model and, in the end, recorded as the
invalid_edit reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from agents.edits import EditError, apply_diff, unified_diff
from evaluators.spec import Task
from bus.edits import check_edit, diff_paths, path_in

# Size caps: a bigger answer or edit is refused before it is parsed or applied.
MAX_ANSWER_CHARS = 200_000
MAX_EDITS = 20
MAX_FILE_CHARS = 500_000
MAX_DIFF_CHARS = 200_000
MAX_HYPOTHESIS_CHARS = 2_000


class AnswerError(ValueError):
    """Why an answer cannot become a trial, in words the model can act on."""


class EditBlock(msgspec.Struct, frozen=True):
    path: str
    search: str
    replace: str


class Answer(msgspec.Struct, frozen=True):
    hypothesis: str
    expected_delta: float | None = None
    edits: list[EditBlock] = []
    diff: str = ""


# For response_format json_schema (strict: every property required, nothing else allowed).
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "hypothesis": {"type": "string"},
        "expected_delta": {"type": ["number", "null"]},
        "edits": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "search": {"type": "string"}, "replace": {"type": "string"}},
                "required": ["path", "search", "replace"],
                "additionalProperties": False,
            },
        },
        "diff": {"type": "string"},
    },
    "required": ["hypothesis", "expected_delta", "edits", "diff"],
    "additionalProperties": False,
}

_FENCED = re.compile(r"```(?:json)?[ \t]*\n(.*?)```", re.S)


def parse_answer(content: str | None, finish_reason: str | None = None) -> Answer:
    """The answer in a model's reply: a JSON object, bare, fenced, or inside some prose."""
    if content is None or not content.strip():
        raise AnswerError("the answer is empty: reply with one JSON object")
    if len(content) > MAX_ANSWER_CHARS:
        raise AnswerError(f"the answer is {len(content)} characters, over the cap of {MAX_ANSWER_CHARS}")
    if finish_reason == "length":
        raise AnswerError(
            "the answer was cut off at the token limit: answer with less text (only the edits, no copies of files)"
        )
    raw = _json_object(content)
    try:
        answer = msgspec.convert(raw, Answer)
    except msgspec.ValidationError as exc:
        raise AnswerError(f"the JSON answer does not fit the schema: {exc}") from None
    if not answer.hypothesis.strip():
        raise AnswerError("the hypothesis is empty")
    if len(answer.hypothesis) > MAX_HYPOTHESIS_CHARS:
        raise AnswerError(f"the hypothesis is {len(answer.hypothesis)} characters, over {MAX_HYPOTHESIS_CHARS}")
    if answer.expected_delta is not None and not math.isfinite(answer.expected_delta):
        raise AnswerError("expected_delta must be a finite number or null")
    if bool(answer.edits) == bool(answer.diff.strip()):
        raise AnswerError("give either edits (SEARCH/REPLACE blocks) or a unified diff: exactly one of them")
    if len(answer.edits) > MAX_EDITS:
        raise AnswerError(f"{len(answer.edits)} edits, over the cap of {MAX_EDITS}")
    return answer


def _json_object(content: str) -> object:
    candidates = [content.strip(), *_FENCED.findall(content)]
    start, end = content.find("{"), content.rfind("}")
    if 0 <= start < end:
        candidates.append(content[start : end + 1])
    error = None
    for text in candidates:
        try:
            value = msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            error = error or exc
            continue
        if isinstance(value, dict):
            return value
    raise AnswerError(f"the answer is not a JSON object ({error or 'no object found'})")


@dataclass(frozen=True)
class EditRules:
    """Where a specialist may write: inside its surface, never frozen, task or evaluator files."""

    surface: str
    paths: list[str] | None  # None: every path (the '*' surface)
    frozen: list[str]
    # First path parts no edit may use: the task folder's own files (task.toml, task.py, ...).
    protected: frozenset[str] = frozenset()
    # Paths in the task's recipe folder that are symlinks: nothing may be written through them.
    symlinks: frozenset[str] = frozenset()

    @classmethod
    def for_task(cls, task: Task, surface: str, paths: list[str] | None) -> "EditRules":
        protected = frozenset(p.name for p in task.folder.iterdir() if p.name != task.recipe_dir.name)
        protected |= {"evaluators"}
        symlinks = frozenset(
            str(p.relative_to(task.recipe_dir)) for p in task.recipe_dir.rglob("*") if p.is_symlink()
        )
        return cls(surface=surface, paths=paths, frozen=list(task.spec.frozen), protected=protected, symlinks=symlinks)

    def check(self, path: str) -> None:
        """Raise AnswerError naming the path and the reason it may not be edited."""
        reason = self.reason(path)
        if reason:
            raise AnswerError(f"{path!r}: {reason}")

    def reason(self, path: str) -> str | None:
        """Why path may not be edited; None when it may."""
        if not path:
            return "the path is empty"
        if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
            return "absolute paths are not allowed; use paths relative to the recipe"
        parts = path.split("/")
        if ".." in parts:
            return "'..' is not allowed in paths"
        if "\\" in path or any(part in ("", ".") for part in parts):
            return "paths must be plain relative names (no '.', empty parts or backslashes)"
        if any(part.lower() == ".git" for part in parts):
            return ".git is not part of a recipe"
        if parts[0] in self.protected:
            return "is a task or evaluator file; no edit may touch it"
        if any(path == link or path.startswith(link + "/") for link in self.symlinks):
            return "points through a symlink"
        if path_in(path, self.frozen):
            return "is frozen"
        if not path_in(path, self.paths):
            return f"is outside the surface {self.surface!r}, which may edit only {', '.join(self.paths)}"
        return None


def apply_answer(answer: Answer, files: Mapping[str, str], rules: EditRules) -> str:
    """The canonical unified diff of the answer's edit against files; AnswerError when it is refused."""
    new = _apply_blocks(answer.edits, files, rules) if answer.edits else _apply_diff(answer.diff, files, rules)
    changed = sorted(p for p in new if new[p] != files.get(p))
    if not changed:
        raise AnswerError("the edit changes nothing")
    diff = "".join(_file_diff(p, files.get(p), new[p]) for p in changed)
    if len(diff) > MAX_DIFF_CHARS:
        raise AnswerError(f"the edit's diff is {len(diff)} characters, over the cap of {MAX_DIFF_CHARS}")
    # The executor's own check, so the agent never publishes what the executor would refuse.
    problems = check_edit(diff, rules.paths, rules.frozen)
    if problems:
        raise AnswerError("; ".join(str(p) for p in problems))
    return diff


def _apply_blocks(blocks: list[EditBlock], files: Mapping[str, str], rules: EditRules) -> dict[str, str]:
    new = dict(files)
    for number, block in enumerate(blocks, 1):
        where = f"edit {number} ({block.path!r})"
        rules.check(block.path)
        if "\x00" in block.search or "\x00" in block.replace:
            raise AnswerError(f"{where}: binary content (NUL bytes) is not allowed")
        text = new.get(block.path)
        if text is None:
            if block.search:
                raise AnswerError(f"{where}: no such file; files you may edit: {', '.join(_editable(files, rules))}")
            new[block.path] = block.replace  # an empty SEARCH on a new path creates the file
        else:
            count = text.count(block.search) if block.search else 0
            if count != 1:
                found = "is empty" if not block.search else ("was not found" if count == 0 else f"occurs {count} times")
                raise AnswerError(f"{where}: the SEARCH text {found}; it must occur exactly once in the file")
            new[block.path] = text.replace(block.search, block.replace, 1)
        _check_size(block.path, new[block.path])
    return new


def _apply_diff(diff: str, files: Mapping[str, str], rules: EditRules) -> dict[str, str]:
    if len(diff) > MAX_DIFF_CHARS:
        raise AnswerError(f"the diff is {len(diff)} characters, over the cap of {MAX_DIFF_CHARS}")
    if "\x00" in diff:
        raise AnswerError("binary content (NUL bytes) is not allowed")
    paths, _ = diff_paths(diff)
    for path in dict.fromkeys(paths):
        rules.check(path)
    if problems := check_edit(diff, rules.paths, rules.frozen):  # symlink modes, binary patches, renames
        raise AnswerError("; ".join(str(p) for p in problems))
    if not diff.endswith("\n"):
        diff += "\n"
    try:
        new = apply_diff(files, diff)
    except EditError as exc:
        raise AnswerError(f"the diff does not apply: {exc}") from None
    if gone := sorted(set(files) - set(new)):
        raise AnswerError(f"deleting files is not supported ({', '.join(gone)})")
    for path in new:
        if new[path] != files.get(path):
            rules.check(path)  # whatever the headers said, only the surface may have changed
            _check_size(path, new[path])
    return new


def _check_size(path: str, text: str) -> None:
    if "\x00" in text:
        raise AnswerError(f"{path!r}: binary content (NUL bytes) is not allowed")
    if len(text) > MAX_FILE_CHARS:
        raise AnswerError(f"{path!r}: {len(text)} characters after the edit, over the cap of {MAX_FILE_CHARS}")


def _editable(files: Mapping[str, str], rules: EditRules) -> list[str]:
    return sorted(p for p in files if rules.reason(p) is None) or ["(none)"]


def _file_diff(path: str, old: str | None, new: str) -> str:
    if old is not None:
        return unified_diff(path, old, new)
    # A new file: git creates it from a diff against /dev/null.
    return unified_diff(path, "", new).replace(f"--- a/{path}\n", "--- /dev/null\n", 1)
