"""The messages an LLM specialist sends: the task brief, its surface's files and the lineage view."""

from __future__ import annotations

import re

from agents.base import Context
from agents.lineage_view import LineageView
from agents.llm_edits import EditRules

# Files are shown whole up to these sizes; a bigger one is cut (and the model is told so).
MAX_SHOWN_FILE_CHARS = 60_000
MAX_SHOWN_CHARS = 150_000
# A bad answer is repeated back to the model only this far, so a huge answer cannot grow the prompt.
MAX_ECHO_CHARS = 4_000


def messages(context: Context, view: LineageView, rules: EditRules) -> list[dict]:
    """The conversation that asks for one trial."""
    user = "\n\n".join([task_brief(context), surface_files(context.files, rules), view.render().rstrip(), _ASK])
    return [{"role": "system", "content": system_message(context, rules)}, {"role": "user", "content": user}]


def system_message(context: Context, rules: EditRules) -> str:
    spec = context.task.spec
    where = ", ".join(rules.paths) if rules.paths is not None else "every recipe file that is not frozen"
    better = "negative" if spec.direction == "min" else "positive"
    return f"""You are {context.specialist}, a specialist in an automated research loop on the task {spec.name}.
You propose one trial at a time: a hypothesis and a code edit to the current best recipe. An executor
runs it, an evaluator scores it, and the outcome comes back to you in the lineage.
Your surface is {rules.surface!r}: you may edit only {where}. Frozen paths ({', '.join(spec.frozen) or 'none'}),
the task's and the evaluator's files are never editable.

Answer with one JSON object and nothing else:
{{"hypothesis": "what you change and why it should help", "expected_delta": -0.1,
  "edits": [{{"path": "train.py", "search": "exact text now in the file", "replace": "its new text"}}],
  "diff": ""}}
- search must occur exactly once in the file; it is replaced by replace. An empty search on a path
  that does not exist yet creates that file.
- Instead of edits you may give a unified diff (a/ and b/ prefixes) in "diff", with "edits": [].
- expected_delta is the change of {spec.metric} you expect ({better} is better), or null."""


def task_brief(context: Context) -> str:
    spec = context.task.spec
    better = "lower" if spec.direction == "min" else "higher"
    gates = "; ".join(f"{g.metric} {g.op} {g.limit:g} (else {g.label})" for g in spec.gates) or "none"
    b = spec.budgets
    return "\n".join(
        [
            f"# Task {spec.name}",
            "",
            spec.description.strip(),
            "",
            f"- Score: {spec.metric}, {better} is better; relative noise {context.campaign.noise or 0:g}.",
            f"- Gates: {gates}.",
            f"- Budgets: training {b.train_s:g} s, evaluation {b.eval_s:g} s, memory {b.memory_mb} MB,"
            f" files {b.file_mb} MB.",
        ]
    )


def surface_files(files: dict[str, str], rules: EditRules) -> str:
    """The current (incumbent's) text of every file this specialist may edit."""
    parts = [f"# Your files (surface {rules.surface!r}), as in the incumbent"]
    left = MAX_SHOWN_CHARS
    shown = [p for p in sorted(files) if rules.reason(p) is None]
    for path in shown:
        text = files[path]
        cut = min(len(text), MAX_SHOWN_FILE_CHARS, left)
        note = "" if cut == len(text) else f" (first {cut} of {len(text)} characters: edit only text shown)"
        parts += ["", f"## {path}{note}", fenced(text[:cut])]
        left -= cut
    if not shown:
        parts += ["", "(none yet: create files inside your surface with an empty search)"]
    return "\n".join(parts)


def fenced(text: str) -> str:
    """text in a code fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    newline = "" if not text or text.endswith("\n") else "\n"
    return f"{fence}\n{text}{newline}{fence}"


def feedback(content: str | None, error: str, tries_left: int) -> list[dict]:
    """The failed answer and why it failed, to append to the conversation."""
    echo = (content or "")[:MAX_ECHO_CHARS]
    if content and len(content) > MAX_ECHO_CHARS:
        echo += f"\n[... {len(content) - MAX_ECHO_CHARS} more characters not repeated]"
    return [
        {"role": "assistant", "content": echo or "(empty)"},
        {
            "role": "user",
            "content": f"That answer cannot be used: {error}\nAnswer again with one corrected JSON object"
            f" ({tries_left} {'try' if tries_left == 1 else 'tries'} left).",
        },
    ]


_ASK = "Propose one trial that improves the score. Answer with the JSON object only."
