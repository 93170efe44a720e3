"""Task specs: a task is a folder in evaluators/tasks/ holding task.toml, task.py and recipe/.

What task.py must define is in evaluators/contract.py.

Adding a task is adding a folder; nothing else in the code names a task.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import operator
import os
import re
import tarfile
import tomllib
from functools import cache
from pathlib import Path
from types import ModuleType

import msgspec

from bus.edits import path_in, surface_paths

from evaluators.contract import check_module

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
GATE_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
KNOB_EFFECTS = ("size", "time", "capacity")
PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
SCORED_FROM = ("artifact", "log")
DEVICE_CLASSES = ("cuda",)  # what a task may require beyond CPUs; executors advertise which they have
RECIPE_FROM_ENV = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What the sandbox sets itself (executors/sandbox.py, recipe_env) or the executor gives a trial: a task's
# own variables may not replace them, or a spec could lift the fence or point a trial at another GPU.
RESERVED_ENV = re.compile(r"^(?:ARX_|PYTHON|LD_|CUDA_VISIBLE_DEVICES$|HOME$|TMPDIR$|PATH$)")


class Budgets(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    train_s: float
    eval_s: float
    memory_mb: int = 4096
    file_mb: int = 64
    # What the run dir (with the log) may hold on disk; the executor kills the run above it.
    disk_mb: int = 512


class Gate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    metric: str
    op: str
    limit: float
    label: str = "disqualified"

    def __post_init__(self):
        if self.op not in GATE_OPS:
            raise ValueError(f"gate on {self.metric}: op {self.op!r} is not one of {sorted(GATE_OPS)}")

    def passes(self, value: float) -> bool:
        return GATE_OPS[self.op](value, self.limit)


class Surface(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    paths: list[str]


class Knob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A numeric constant `NAME = value` at the start of a line in `path`."""

    name: str
    path: str
    kind: str  # "int" or "float"
    low: float
    high: float
    log: bool = False
    # What raising the knob does to "size" (the artifact), "time" (training) or "capacity" (accuracy):
    # +1 raises it, -1 lowers it. The repair specialist reads this to turn a failure into a fix.
    effects: dict[str, int] = {}

    def __post_init__(self):
        if self.kind not in ("int", "float"):
            raise ValueError(f"knob {self.name}: kind must be 'int' or 'float', not {self.kind!r}")
        if not self.low < self.high:
            raise ValueError(f"knob {self.name}: low {self.low} must be below high {self.high}")
        for effect, sign in self.effects.items():
            if effect not in KNOB_EFFECTS or sign not in (-1, 1):
                raise ValueError(f"knob {self.name}: effects must map {KNOB_EFFECTS} to 1 or -1, not {effect}={sign}")


class TransformEdit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Replace the one occurrence of `search` with `replace` (both may hold {param} placeholders)."""

    search: str
    replace: str


class Transform(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A known technique as a named, parameterized edit of one file of one surface.

    `edits` are applied in order, each search text must occur exactly once; `constants` set
    `NAME = value` lines to an arithmetic expression of the file's constants and {param} placeholders
    (declared knobs are clipped into their bounds). Every combination of `params` values is one variant.
    """

    name: str
    surface: str
    path: str
    description: str
    edits: list[TransformEdit] = []
    constants: dict[str, str] = {}
    params: dict[str, list[int | float | str]] = {}
    # Failure labels this technique is a fix for (the repair specialist tries it on such a failure).
    fixes: list[str] = []

    def __post_init__(self):
        if not self.edits and not self.constants:
            raise ValueError(f"transform {self.name}: needs edits or constants")
        for param, values in self.params.items():
            if not values:
                raise ValueError(f"transform {self.name}: param {param} has no values")
        # Edits are code, where braces are common; constants are expressions, where they are not.
        used_in_constants = {m for text in self.constants.values() for m in PLACEHOLDER.findall(text)}
        if used_in_constants - set(self.params):
            unknown = sorted(used_in_constants - set(self.params))
            raise ValueError(f"transform {self.name}: placeholders {unknown} are not params")
        texts = [e.search + e.replace for e in self.edits] + list(self.constants.values())
        unused = [p for p in self.params if not any(f"{{{p}}}" in text for text in texts)]
        if unused:
            raise ValueError(f"transform {self.name}: params {unused} are used nowhere")


class Preflight(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A short smoke run of an edited recipe before its full run (executors/preflight.py): `command`
    (empty: the task's own) runs with ARX_SMOKE=1 set, which the recipe reads to train a step or two."""

    command: list[str] = []
    budget_s: float = 20.0

    def __post_init__(self):
        if self.budget_s <= 0:
            raise ValueError(f"preflight.budget_s must be positive, not {self.budget_s}")


class TaskSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    description: str
    metric: str
    direction: str  # "min" or "max"
    score: str  # "wall_s" (measured by the executor) or a metric the evaluator computes
    command: list[str]
    budgets: Budgets
    surfaces: list[Surface]
    gates: list[Gate] = []
    knobs: list[Knob] = []
    frozen: list[str] = []
    noise: float = 0.0
    exclusive_cores: int = 0
    transforms: list[Transform] = []
    preflight: Preflight | None = None
    # Where the starting recipe lives: "" for the task's recipe/ folder, "env:VAR" for the folder the
    # environment variable VAR names (a user's checkout of an official repository).
    recipe_source: str = ""
    # Globs, relative to the recipe folder, of the files a campaign bundles; empty for every file.
    include: list[str] = []
    # "artifact": the evaluator scores the run's artifact itself. "log": task.py's parse_log(text) reads
    # the metrics from the log the executor captured (official tasks, whose log is the official output).
    scored_from: str = "artifact"
    # Device classes a trial needs, e.g. ["cuda"]: only executors that have them take its trials.
    requires: list[str] = []
    # The recipe may start processes and use sockets (torchrun, torch.compile's compilers); its network
    # namespace, where the host has one, still reaches nothing but its own loopback.
    allow_subprocess: bool = False
    # Globs, relative to the run dir, of the files a run leaves that are its product (an official
    # recipe's compressed model): the executor stores them as the trial's artifact, instead of what
    # ARX_ARTIFACT_DIR holds. A glob that matches nothing (a run that broke first) is no error.
    artifacts: list[str] = []
    # Variables the command runs with: the recipe's own settings (the sandbox's own are refused).
    env: dict[str, str] = {}
    short: Short | None = None

    def __post_init__(self):
        check_env(self.env, "env")
        if self.direction not in ("min", "max"):
            raise ValueError(f"direction must be 'min' or 'max', not {self.direction!r}")
        if self.scored_from not in SCORED_FROM:
            raise ValueError(f"scored_from must be one of {SCORED_FROM}, not {self.scored_from!r}")
        if self.recipe_source and not RECIPE_FROM_ENV.match(self.recipe_source):
            raise ValueError(f"recipe_source must be '' or 'env:VARIABLE', not {self.recipe_source!r}")
        for field, where in (("include", "the recipe folder"), ("artifacts", "the run dir")):
            for pattern in getattr(self, field):
                if not pattern or pattern.startswith("/") or ".." in pattern.split("/"):
                    raise ValueError(f"{field}: {pattern!r} must be a glob relative to {where}")
        unknown = sorted(set(self.requires) - set(DEVICE_CLASSES))
        if unknown:
            raise ValueError(f"requires: unknown device classes {unknown} (known: {list(DEVICE_CLASSES)})")
        if not self.command:
            raise ValueError("command must not be empty")
        names = [s.name for s in self.surfaces]
        if len(set(names)) != len(names):
            raise ValueError(f"surfaces: duplicate names in {names}")
        transforms = [t.name for t in self.transforms]
        if len(set(transforms)) != len(transforms):
            raise ValueError(f"transforms: duplicate names in {transforms}")
        for transform in self.transforms:
            if transform.surface not in names:
                raise ValueError(f"transform {transform.name}: no surface {transform.surface!r}")
            if not path_in(transform.path, self.surface(transform.surface).paths):
                raise ValueError(f"transform {transform.name}: {transform.path} is not in surface {transform.surface}")

    def shortened(self) -> TaskSpec:
        """This spec with its [short] settings applied: what `campaign start --short` records."""
        if self.short is None:
            raise ValueError(f"task {self.name} has no [short] table: it cannot be run short")
        budgets = msgspec.structs.replace(self.budgets, train_s=self.short.train_s or self.budgets.train_s)
        return msgspec.structs.replace(self, env={**self.env, **self.short.env}, budgets=budgets, short=None,
                                       command=[*self.command, *self.short.args])

    def paths_of(self, surface: str) -> list[str] | None:
        """The paths a trial on this surface may edit (bus.edits.surface_paths); ValueError for an unknown one."""
        try:
            return surface_paths({s.name: s.paths for s in self.surfaces}, surface)
        except ValueError as exc:
            raise ValueError(f"task {self.name}: {exc}") from None

    def surface(self, name: str) -> Surface:
        for surface in self.surfaces:
            if surface.name == name:
                return surface
        raise KeyError(f"task {self.name} has no surface {name!r} (it has {[s.name for s in self.surfaces]})")

    def better(self, a: float, b: float) -> bool:
        """Is score a better than score b?"""
        return a < b if self.direction == "min" else a > b


def check_env(env: dict[str, str], where: str) -> None:
    for name in env:
        if not ENV_NAME.match(name) or RESERVED_ENV.match(name):
            raise ValueError(f"{where}: {name!r} is not a variable a task may set (not a name, or the sandbox's own)")


class Short(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The recipe shrunk to a run of a minute or two through its own settings (the variables it reads,
    the arguments its command takes), never by editing it: `arx campaign start --short` runs the
    campaign with these (scripts/gpu_smoke.sh). The scores prove the plumbing, not the recipe."""

    env: dict[str, str] = {}
    args: list[str] = []  # appended to the command
    train_s: float | None = None  # the executor's wall clock for the short run

    def __post_init__(self):
        check_env(self.env, "short.env")
        if self.train_s is not None and not self.train_s > 0:
            raise ValueError(f"short.train_s must be positive, not {self.train_s}")


class Task:
    """A loaded task folder: its spec, its trusted code module and its starting recipe."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.spec = load_spec(folder / "task.toml")
        if not self.spec.recipe_source and not self.recipe_dir.is_dir():
            raise ValueError(f"task {self.spec.name}: missing recipe/ folder in {folder}")

    @property
    def recipe_dir(self) -> Path:
        """The starting recipe: the task's recipe/ folder, or the checkout its recipe_source names.
        Looked up when needed, so hosts that never bundle the recipe need no checkout."""
        match = RECIPE_FROM_ENV.match(self.spec.recipe_source)
        if match is None:
            return self.folder / "recipe"
        variable = match.group(1)
        value = os.environ.get(variable, "")
        if not value or not Path(value).expanduser().is_dir():
            raise ValueError(f"task {self.spec.name}: set {variable} to the folder of your checkout (it is {value!r})")
        return Path(value).expanduser()

    @property
    def name(self) -> str:
        return self.spec.name

    @cache
    def module(self) -> ModuleType:
        path = self.folder / "task.py"
        module = _load_module(path, f"arx_task_{self.folder.name}")
        # Once per load: an incomplete task.py is refused on every host that loads it, naming all it lacks,
        # not by an AttributeError only at the call site (perhaps another host's) that needs the function.
        check_module(module, self.name, self.spec.scored_from, path)
        return module

    def smoke_data(self) -> ModuleType | None:
        """The task's smoke_data.py (`arx smoke-data`), for an official task whose data cannot be had here."""
        path = self.folder / "smoke_data.py"
        return _load_module(path, f"arx_smoke_data_{self.folder.name}") if path.exists() else None

    def bundle(self) -> bytes:
        """The starting recipe (the files its include globs match) as a deterministic tar.gz."""
        return pack_folder(self.recipe_dir, self.spec.include)


def _load_module(path: Path, name: str) -> ModuleType:
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    return module


def pack_folder(folder: Path, include: list[str] = ()) -> bytes:
    """A folder as a deterministic tar.gz: sorted names, zeroed owners and times, no symlinks or caches.
    With include, only the files those globs match; a glob that matches none is an error."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in _packed_files(folder, include):
            rel = path.relative_to(folder)
            info = tar.gettarinfo(str(path), arcname=str(rel))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return gzip.compress(buffer.getvalue(), mtime=0)


def _packed_files(folder: Path, include: list[str]) -> list[Path]:
    found = set()
    for pattern in include or ["**/*"]:
        matched = {p for p in folder.glob(pattern) if p.is_file() and not p.is_symlink()}
        if include and not matched:
            raise ValueError(f"include: {pattern!r} matches no file in {folder}")
        found |= matched
    return sorted(p for p in found if "__pycache__" not in p.relative_to(folder).parts)


def load_spec(path: Path) -> TaskSpec:
    """Parse and validate task.toml; errors name the file and the field that is wrong."""
    try:
        raw = tomllib.loads(path.read_text())
        return msgspec.convert(raw, TaskSpec)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing") from None
    except (tomllib.TOMLDecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def task_names() -> list[str]:
    folders = [f for tasks_dir in task_folders() if tasks_dir.is_dir() for f in tasks_dir.iterdir()]
    return sorted({load_spec(f / "task.toml").name for f in folders if (f / "task.toml").exists()})


def task_folders() -> list[Path]:
    """Where tasks are looked up: the folders in ARX_TASKS_PATH (os.pathsep-separated) first, then ours."""
    extra = [Path(p) for p in os.environ.get("ARX_TASKS_PATH", "").split(os.pathsep) if p]
    return [*extra, TASKS_DIR]


def campaign_task(name: str, spec: dict) -> Task:
    """A campaign's task as its CampaignStarted recorded it: the spec from the log, so that every host
    runs and judges by the same command, budgets, gates and surfaces whatever version of task.toml it
    has, with the trusted code (task.py) and the recipe checkout of this host's own install."""
    task = load_task(name)
    if spec:
        task.spec = msgspec.convert(spec, TaskSpec)
    return task


def load_task(name: str) -> Task:
    for tasks_dir in task_folders():
        folder = tasks_dir / name.replace("-", "_")
        if (folder / "task.toml").exists():
            return Task(folder)
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
