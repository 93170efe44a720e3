"""`arx smoke-data`: every official GPU task's stand-in data in one folder each, the variables that point
the tasks at it, and a second run over the first (each format's own reader is in test_smoke_data_*.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from evaluators.smoke_data import MARKER, smoke_tasks

ARX = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "arx")
VARIABLES = {"parameter-golf": "ARX_PARAMETER_GOLF_DATA", "nanochat-d12": "ARX_NANOCHAT_DATA",
             "airbench96": "ARX_AIRBENCH_DATA"}


def smoke_data(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ARX, "smoke-data", *args], capture_output=True, text=True, timeout=300)


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_it_writes_every_official_task_and_prints_where(tmp_path):
    assert sorted(smoke_tasks()) == sorted(VARIABLES)
    run = smoke_data("--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in run.stdout.splitlines())
    assert exports == {variable: str(tmp_path / task) for task, variable in VARIABLES.items()}
    first = {task: contents(tmp_path / task) for task in VARIABLES}
    for task in VARIABLES:
        assert MARKER in first[task] and len(first[task]) > 2
        assert sum(map(len, first[task].values())) < 20 * 2**20  # small enough to carry to a GPU host
    # The second time: written over the first, the same bytes.
    again = smoke_data("--out", str(tmp_path), "--task", "airbench96", "--task", "nanochat-d12")
    assert again.returncode == 0, again.stderr
    assert {task: contents(tmp_path / task) for task in ("airbench96", "nanochat-d12")} == {
        task: first[task] for task in ("airbench96", "nanochat-d12")}


def test_it_never_writes_over_other_data_and_names_unknown_tasks(tmp_path):
    real = tmp_path / "parameter-golf" / "datasets" / "fineweb10B_sp1024" / "fineweb_val_000000.bin"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"the challenge's own shard")
    run = smoke_data("--out", str(tmp_path), "--task", "parameter-golf")
    assert run.returncode == 1 and run.stderr.startswith("arx smoke-data: ") and "not smoke data" in run.stderr
    assert real.read_bytes() == b"the challenge's own shard"
    assert not (tmp_path / "parameter-golf" / "tokenizers").exists()
    unknown = smoke_data("--out", str(tmp_path), "--task", "digits-speedrun")
    assert unknown.returncode == 1 and "has no smoke data" in unknown.stderr
