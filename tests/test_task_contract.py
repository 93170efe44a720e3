"""The task contract (evaluators/contract.py): loading a task refuses a task.py that lacks a function its
kind requires, every shipped task meets it, and a task folder made as the README's "Tasks" section says
loads. Task folders are real files in tmp_path, found through ARX_TASKS_PATH."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest

from evaluators.contract import OPTIONAL, REQUIRED
from evaluators.spec import TASKS_DIR, Task, load_task

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "tasks" / "tiny"
SHIPPED = [*sorted(toml.parent for toml in TASKS_DIR.glob("*/task.toml")), TINY]


def copy_tiny(tmp_path: Path, monkeypatch) -> Path:
    """The tiny test task, copied to tmp_path/tasks/tiny and found there first."""
    folder = shutil.copytree(TINY, tmp_path / "tasks" / "tiny")
    monkeypatch.setenv("ARX_TASKS_PATH", str(folder.parent))
    return folder


def drop_functions(path: Path, *names: str) -> None:
    """Remove these top-level functions from a Python file."""
    source = path.read_text()
    for name in names:
        source = re.sub(rf"\ndef {name}\(.*?(?=\ndef |\Z)", "\n", source, flags=re.S)
        assert f"def {name}(" not in source
    path.write_text(source)


def test_a_task_py_lacking_required_functions_is_refused_naming_them(tmp_path, monkeypatch):
    task_py = copy_tiny(tmp_path, monkeypatch) / "task.py"
    drop_functions(task_py, "heldout", "metrics")
    with pytest.raises(ValueError) as refused:
        load_task("tiny").module()
    assert str(refused.value) == (
        f"task tiny: {task_py} lacks heldout(), metrics(outputs, targets) required of an artifact-scored task")


def test_a_log_scored_task_lacking_parse_log_is_refused(tmp_path, monkeypatch):
    folder = copy_tiny(tmp_path, monkeypatch)
    toml = folder / "task.toml"
    toml.write_text('scored_from = "log"\n' + toml.read_text())
    refusal = r"^task tiny: .*task\.py lacks parse_log\(text\) required of a log-scored task$"
    with pytest.raises(ValueError, match=refusal):
        load_task("tiny").module()
    # The same task.py with parse_log added loads: parse_log alone was missing.
    with open(folder / "task.py", "a") as task_py:
        task_py.write("\n\ndef parse_log(text):\n    return {}\n")
    assert load_task("tiny").module().parse_log("") == {}


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda folder: folder.name)
def test_every_shipped_task_meets_its_contract(folder):
    # Loads here, on CPUs and without network: GPU tasks' task.py imports nothing heavy at the top.
    task = Task(folder)
    module = task.module()
    assert all(callable(getattr(module, name, None)) for name in REQUIRED[task.spec.scored_from])


def readme_tasks() -> str:
    """The README's "Tasks" section, up to its first subsection."""
    text = (ROOT / "README.md").read_text().split("\n## Tasks\n", 1)[1]
    return re.split(r"^##", text, maxsplit=1, flags=re.M)[0]


def readme_item(section: str, words: str) -> str:
    """The one nested list item (the task.py functions of a kind of task) that holds these words."""
    items = [item for item in re.findall(r"^  - (.*(?:\n    .*)*)", section, re.M) if words in item]
    assert len(items) == 1, (words, items)
    return items[0]


def readme_functions(section: str, words: str) -> list[str]:
    return re.findall(r"`(\w+\([\w, ]*\))`", readme_item(section, words))


def test_readme_lists_the_functions_of_the_contract():
    section = readme_tasks()
    every = readme_functions(section, "Every task")
    assert sorted(every + readme_functions(section, "artifact-scored")) == sorted(REQUIRED["artifact"].values())
    assert sorted(every + readme_functions(section, "log-scored")) == sorted(REQUIRED["log"].values())
    assert readme_functions(section, "Optional") == list(OPTIONAL.values())


@pytest.mark.parametrize("kind", ["artifact-scored", "log-scored"])
def test_a_task_folder_made_as_the_readme_says_loads(kind, tmp_path, monkeypatch):
    section = readme_tasks()
    assert re.findall(r"^- `([^`]+)`", section, re.M) == ["task.toml", "task.py", "recipe/"]  # all made below
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    item = readme_item(section, kind)
    # The spec line the README names for this kind (`scored_from = "log"`); none for the default.
    spec_lines = "".join(f"{line}\n" for line in re.findall(r"`(scored_from = [^`]*)`", item))
    name = tomllib.loads(toml)["name"]
    folder = tmp_path / "tasks" / name.replace("-", "_")  # "named after the task, `-` written `_`"
    (folder / "recipe").mkdir(parents=True)
    (folder / "task.toml").write_text(spec_lines + toml)
    functions = readme_functions(section, "Every task") + readme_functions(section, kind)
    (folder / "task.py").write_text("".join(f"def {function}:\n    pass\n\n\n" for function in functions))
    monkeypatch.setenv("ARX_TASKS_PATH", str(folder.parent))

    task = load_task(name)
    assert task.spec.scored_from == kind.removesuffix("-scored")
    task.module()
