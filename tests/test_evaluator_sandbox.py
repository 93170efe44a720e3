"""The evaluation sandbox with digits-speedrun's real predict(): good models score, nosy ones are fenced."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from bus.events import ObjectRef, TrialFinished
from evaluator_artifacts import TASK, write_artifact
from evaluators.labels import label
from evaluators.sandbox import OUTPUT_MB, SandboxPool
from evaluators.unpack import UnsafeArtifact, unpack_artifact
from evaluators.scoring import to_evaluation

pytestmark = pytest.mark.anyio

FINISHED = TrialFinished(event_id="f", campaign_id="c", trial_id="t", executor="x", exit_code=0, wall_s=9.0,
                         artifact=ObjectRef(name="a", size=1, sha256="0"))


@pytest.fixture(scope="module")
def heldout():
    return TASK.module().heldout()


@pytest.fixture(scope="module")
async def pool(tmp_path_factory):
    """One pool for the module, as in an evaluator: each test's process warms up during the one before."""
    pool = SandboxPool(tmp_path_factory.mktemp("sandbox"))
    yield pool
    await pool.close()


def ended(pid: int, within_s: float = 10.0) -> bool:
    """Dead, or a zombie about to be reaped, within the given time."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


async def judge(pool, folder, heldout, *, budget_s=None, incumbent=None, **artifact):
    """Write an artifact, run it in the sandbox, score and label it as the evaluator does."""
    artifact_dir = write_artifact(folder, **artifact)
    result = await pool.run(TASK, artifact_dir, heldout[0], budget_s=budget_s)
    evaluation = to_evaluation(TASK, result, heldout[1], artifact_dir)
    return result, evaluation, label(FINISHED, TASK.spec, evaluation, incumbent, 0.03)


async def test_a_trained_artifact_scores_well_in_the_sandbox(tmp_path, pool, heldout):
    result, evaluation, verdict = await judge(pool, tmp_path / "trained", heldout)
    assert result.error == "" and not result.timed_out
    assert evaluation.metrics["seeds"] == 3
    assert evaluation.metrics["accuracy"] > 0.96
    assert verdict.label == "keep"

    # An untrained copy runs just as well and scores like chance: the score is the evaluator's, not the model's.
    _, evaluation, verdict = await judge(pool, tmp_path / "untrained", heldout, trained=False)
    assert evaluation.metrics["accuracy"] < 0.3
    assert (verdict.label, verdict.evidence.gate) == ("disqualified", "accuracy")


NOSY_MODEL = """import importlib.util, json, os, socket, subprocess
from pathlib import Path

def attempt(action):
    try:
        action()
        return "done"
    except PermissionError as exc:
        return str(exc)

def build_model():
    sklearn = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0])
    report = {
        "labels": attempt(lambda: (sklearn / "datasets" / "data" / "digits.csv.gz").read_bytes()),
        "connect": attempt(lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2)),
        "spawn": attempt(lambda: subprocess.run(["touch", "MARKER"])),
        "system": attempt(lambda: os.system("touch MARKER")),
        "environment": sorted(os.environ),
    }
    raise RuntimeError(json.dumps(report))
"""


async def test_a_nosy_model_cannot_read_labels_connect_or_spawn(tmp_path, pool, heldout):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    marker = tmp_path / "MARKER"
    model = NOSY_MODEL.replace("PORT", str(listener.getsockname()[1])).replace("MARKER", str(marker))
    _, _, verdict = await judge(pool, tmp_path / "artifact", heldout, model_py=model)

    raise_line = model.splitlines().index("    raise RuntimeError(json.dumps(report))") + 1
    assert (verdict.label, verdict.evidence.stage) == ("crash", "evaluate")
    assert verdict.evidence.frame == f"model.py:{raise_line} in build_model"
    report = json.loads(verdict.evidence.message.removeprefix("RuntimeError: "))
    assert "digits.csv.gz is not allowed" in report["labels"]
    assert "socket" in report["connect"] and "not allowed" in report["connect"]
    assert "subprocess.Popen is not allowed" in report["spawn"]
    assert "os.system is not allowed" in report["system"]
    assert not any(key.startswith(("NATS", "ARX", "PYTHON")) for key in report["environment"])
    with pytest.raises(TimeoutError):
        listener.accept()  # nobody connected
    assert not marker.exists()
    listener.close()


async def test_an_unguarded_read_of_the_labels_is_a_labelled_crash(tmp_path, pool, heldout):
    model = (
        "import importlib.util, numpy\n"
        "def build_model():\n"
        "    root = importlib.util.find_spec('sklearn').submodule_search_locations[0]\n"
        "    labels = numpy.loadtxt(root + '/datasets/data/digits.csv.gz', delimiter=',')[:, -1]\n"
    )
    _, _, verdict = await judge(pool, tmp_path / "artifact", heldout, model_py=model)
    assert (verdict.label, verdict.evidence.frame) == ("crash", "model.py:4 in build_model")
    assert verdict.evidence.message.startswith("PermissionError: sandbox: open of ")


async def test_a_slow_model_is_killed_at_the_eval_budget(tmp_path, pool, heldout):
    model = (
        "import os, time\n"
        "open(os.path.join(os.path.dirname(__file__), 'pid'), 'w').write(str(os.getpid()))\n"
        "def build_model():\n"
        "    time.sleep(60)\n"
    )
    began = time.monotonic()
    result, _, verdict = await judge(pool, tmp_path / "artifact", heldout, budget_s=1.0, model_py=model)
    assert result.timed_out and time.monotonic() - began < 10
    assert ended(int((tmp_path / "artifact" / "pid").read_text()))  # killed, not left sleeping
    assert verdict.label == "eval_budget_overrun"
    assert (verdict.evidence.gate, verdict.evidence.limit) == ("eval_s", TASK.spec.budgets.eval_s)


async def test_a_model_writing_too_much_is_stopped_at_the_file_limit(tmp_path, pool, heldout):
    model = f"def build_model():\n    open('big', 'wb').write(b'0' * ({OUTPUT_MB} + 1) * 1024 * 1024)\n"
    result, _, verdict = await judge(pool, tmp_path / "artifact", heldout, model_py=model)
    assert "File too large" in result.error  # Python ignores SIGXFSZ: the write fails instead
    assert verdict.label == "crash"
    assert (verdict.evidence.gate, verdict.evidence.limit) == ("file_mb", OUTPUT_MB)


async def test_a_model_over_the_memory_limit_is_a_crash_at_the_memory_gate(tmp_path, pool, heldout):
    model = "def build_model():\n    return bytearray(8 * 1024 ** 3)\n"  # over the task's 4 GB
    _, _, verdict = await judge(pool, tmp_path / "artifact", heldout, model_py=model)
    assert (verdict.label, verdict.evidence.frame) == ("crash", "model.py:2 in build_model")
    assert (verdict.evidence.gate, verdict.evidence.limit) == ("memory_mb", TASK.spec.budgets.memory_mb)


def test_unpacking_refuses_links_escapes_and_bombs(tmp_path):
    import gzip
    import io
    import tarfile

    def archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for info, data in members:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return gzip.compress(buffer.getvalue())

    def entry(name: str, kind=tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        return info

    dest = tmp_path / "out"
    dest.mkdir()
    assert unpack_artifact(archive((entry("./model.py"), b"x = 1\n"), (entry("sub/seed0.pt"), b"w")), dest) == [
        "./model.py", "sub/seed0.pt"]
    assert (dest / "sub" / "seed0.pt").read_bytes() == b"w"

    refused = {
        "absolute": archive((entry("/etc/evil"), b"")),
        "parent": archive((entry("a/../../evil"), b"")),
        "symlink": archive((entry("labels", tarfile.SYMTYPE, "/etc/passwd"), b"")),
        "hardlink": archive((entry("labels", tarfile.LNKTYPE, "model.py"), b"")),
        "device": archive((entry("dev", tarfile.CHRTYPE), b"")),
        "too big": archive((entry("seed0.pt"), b"w" * (2 * 1024 * 1024))),
        "bomb": gzip.compress(b"\0" * (40 * 1024 * 1024)),
        "not gzip": b"PK\3\4 a zip file",
    }
    for name, data in refused.items():
        target = tmp_path / name
        target.mkdir()
        with pytest.raises(UnsafeArtifact):
            unpack_artifact(data, target, max_bytes=1024 * 1024)
        assert not any(target.iterdir()), name
