"""Hostile recipes: each is contained by the executor's sandbox, labelled as it should be, and changes
nothing the evaluator decides.

Most run through executors.sandbox.run_command, as the executor runs a trial, and are labelled by the
evaluator's rules; the fork bomb, the held-out read, the parent killer, the .git deleter and the forged
score also run as trials through real executor and evaluator processes on a real nats-server. The
three real tasks' recipes still run under the same sandbox. Model code in the evaluator's sandbox
meets the same fence.

A recipe reports each attempt in report.json (in its run dir): "PermissionError: sandbox: ..." when
the fence refused it. Attempts that would harm this machine if the sandbox failed are bounded (a fork
bomb whose children sleep instead of forking again, no kill(-1)).
"""

from __future__ import annotations

import ast
import asyncio
import difflib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agents.edits import set_knob
from bus.connection import Bus
from bus.events import TrialFinished, TrialProposed
from cluster import Cluster
from evaluator_artifacts import TASK as DIGITS_TASK
from evaluator_artifacts import write_artifact
from evaluators import labels
from evaluators.sandbox import SandboxPool
from evaluators.spec import Task, load_task
from evaluators.scoring import to_evaluation
from executors import sandbox
from executors.sandbox import DISK_POLL_S, Limits, RunResult, namespaces, run_command

TESTS = Path(__file__).resolve().parent
TINY = Task(TESTS / "tasks" / "tiny")
LIMITS = Limits(wall_s=30, memory_mb=2048, file_mb=4, disk_mb=64)
SITE_PACKAGES = Path(importlib.util.find_spec("numpy").origin).parents[1]
DIGITS = SITE_PACKAGES / "sklearn" / "datasets" / "data" / "digits.csv.gz"
PYDOC_TOPICS = Path(importlib.util.find_spec("pydoc_data").origin).parent / "topics.py"
EVALUATOR_TASK = Path(importlib.util.find_spec("evaluators").origin).parent / "tasks" / "digits_speedrun" / "task.py"
SECRET = "the held-out answer is 42"
NAMESPACES = namespaces()[1]
needs_namespaces = pytest.mark.skipif(
    NAMESPACES != ("net", "pid"), reason="this host refuses user, network and pid namespaces"
)

# Each attempt is recorded in report.json as it happens, so a recipe that dies later still reports.
PRELUDE = """\
import json, os, signal, shutil, sys, time
from pathlib import Path

report = {}

def attempt(name, action):
    try:
        result = action()
    except Exception as exc:
        report[name] = f"{type(exc).__name__}: {exc}"
    else:
        report[name] = f"done: {result!r}"[:200]
    with open("report.json", "w") as out:
        json.dump(report, out, indent=1)
"""

READ_OUTSIDE = PRELUDE + """
import pwd

def patched_realpath():
    os.path.realpath = lambda path, **kw: os.path.join(os.getcwd(), "harmless.txt")  # fool the fence?
    return open(SECRET).read()

attempt("digits data file", lambda: open(DIGITS, "rb").read(16))
attempt("digits loader", lambda: __import__("sklearn.datasets", fromlist=["x"]).load_digits().target[:8].tolist())
attempt("pydoc_data import", lambda: __import__("pydoc_data.topics", fromlist=["x"]).topics["if"][:40])
attempt("pydoc_data source", lambda: open(PYDOC_TOPICS).read(40))
attempt("evaluator task.py", lambda: open(EVALUATOR_TASK).read(40))
attempt("evaluator split", lambda: __import__("evaluators.pydoc_text", fromlist=["x"]).split().heldout[0][:40])
attempt("/etc/passwd", lambda: open("/etc/passwd").read(40))
attempt("~/.ssh", lambda: open(os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".ssh", "id_rsa")).read(40))
attempt("secret beside the run dir", lambda: open(SECRET).read())
attempt("secret by a relative path", lambda: open("../../secret.txt").read())
attempt("listing beside the run dir", lambda: os.listdir(OUTSIDE))
attempt("another trial's log", lambda: open(OTHER_LOG).read())
attempt("a folder descriptor (for dir_fd)", lambda: os.open(SITE_PACKAGES, os.O_RDONLY))
attempt("a patched os.path.realpath", patched_realpath)
"""

WRITE_OUTSIDE = PRELUDE + """
import sqlite3

attempt("create beside", lambda: open(os.path.join(OUTSIDE, "planted.txt"), "w").write("x"))
attempt("append to victim", lambda: open(VICTIM, "a").write("x"))
attempt("remove victim", lambda: os.remove(VICTIM))
attempt("rename victim in", lambda: os.rename(VICTIM, "stolen.txt"))
attempt("rmtree victim folder", lambda: shutil.rmtree(VICTIM_DIR))
attempt("mkdir beside", lambda: os.mkdir(os.path.join(OUTSIDE, "made")))
attempt("chmod victim", lambda: os.chmod(VICTIM, 0o777))
attempt("symlink to victim", lambda: os.symlink(VICTIM, "link"))
attempt("hard link to victim", lambda: os.link(VICTIM, "hardlink"))
attempt("sqlite beside", lambda: sqlite3.connect(os.path.join(OUTSIDE, "db.sqlite")).execute("create table t(x)"))
attempt("copy out", lambda: shutil.copy("train.py", os.path.join(OUTSIDE, "copied.py")))
attempt("plant in site-packages", lambda: open(os.path.join(SITE_PACKAGES, "planted.py"), "w").write("x"))
attempt("relative climb", lambda: open("../planted.txt", "w").write("x"))
attempt("write inside", lambda: Path("artifact").mkdir() or Path("artifact/out.txt").write_text("ok"))
"""

FORK_BOMB = PRELUDE + """
import ctypes, multiprocessing, socket, subprocess

attempt("os.fork", os.fork)
attempt("subprocess", lambda: subprocess.run(["true"]).returncode)
attempt("os.system", lambda: os.system("true"))
attempt("multiprocessing", lambda: multiprocessing.Process(target=print).start())
attempt("posix_spawn", lambda: os.posix_spawn("/bin/true", ["true"], {}))
attempt("libc by name", lambda: ctypes.CDLL("libc.so.6").getpid())
attempt("the process's own symbols", lambda: ctypes.CDLL(None).getpid())
attempt("ctypes.pythonapi", lambda: ctypes.pythonapi.Py_GetVersion)
attempt("socket", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2))
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
for _ in range(200):  # the bomb; bounded (children sleep, not fork) in case the sandbox ever fails
    if os.fork() == 0:
        time.sleep(60)
"""

KILL_PARENT = PRELUDE + """
attempt("kill a process", lambda: os.kill(DECOY, signal.SIGKILL))
attempt("kill its group", lambda: os.killpg(DECOY_GROUP, signal.SIGKILL))
attempt("kill itself", lambda: os.kill(os.getpid(), 0))
os.kill(os.getppid(), signal.SIGKILL)
print("still here")
"""

DELETE_GIT = PRELUDE + """
attempt("rmtree .git", lambda: shutil.rmtree(os.path.join(PROJECT, ".git")))
attempt("remove HEAD", lambda: os.remove(os.path.join(PROJECT, ".git", "HEAD")))
attempt("rename .git", lambda: os.rename(os.path.join(PROJECT, ".git"), os.path.join(PROJECT, "gone")))
attempt("truncate config", lambda: open(os.path.join(PROJECT, ".git", "config"), "w").close())
attempt("own .git", lambda: shutil.rmtree(".git"))
"""


def recipe(code: str, **values) -> str:
    """The recipe with its constants (paths, pids) set as Python literals."""
    lines = "".join(f"{name} = {value!r}\n" for name, value in values.items())
    return code.replace("report = {}\n", f"report = {{}}\n{lines}", 1)


def run(tmp_path: Path, code: str, limits: Limits = LIMITS, **kwargs) -> RunResult:
    run_dir = tmp_path / "runs" / "trial"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.py").write_text(code)
    return run_command(["{python}", "train.py"], run_dir, limits, log_path=tmp_path / "runs" / "trial.log", **kwargs)


def report(tmp_path: Path) -> dict[str, str]:
    return json.loads((tmp_path / "runs" / "trial" / "report.json").read_text())


def refused(attempts: dict[str, str]) -> dict[str, str]:
    """The attempts the fence did not refuse (all of them should be)."""
    return {name: what for name, what in attempts.items() if not what.startswith("PermissionError: sandbox: ")}


def verdict(result: RunResult, limits: Limits = LIMITS) -> labels.Verdict:
    """The evaluator's label for this run, from the fields the executor reports."""
    finished = TrialFinished(
        event_id="f", campaign_id="c", trial_id="t", executor="x", exit_code=result.exit_code,
        signal=result.signal, timed_out=result.timed_out, wall_s=result.wall_s, peak_rss_mb=result.peak_rss_mb,
        limits={"train_s": limits.wall_s, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                "disk_mb": limits.disk_mb},
        log_tail=result.log.read_text()[-4000:], killed_by=result.killed_by, disk_mb=result.disk_mb,
    )
    return labels.label(finished, TINY.spec, None, None, 0.0)


def running_in(folder: Path) -> list[int]:
    """Host pids of live processes working in folder (a recipe's own pids mean nothing out here)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd").startswith(str(folder.resolve())):
                if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def decoy():
    """A process that stands for the executor: nothing a recipe does may kill it."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


# -- each hostile recipe through run_command -------------------------------------------------------


def test_reads_outside_the_tree_are_refused_and_a_held_out_read_is_a_labelled_crash(tmp_path):
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "runs" / "other").mkdir(parents=True)
    (tmp_path / "runs" / "other.log").write_text(SECRET)
    code = recipe(READ_OUTSIDE, DIGITS=str(DIGITS), PYDOC_TOPICS=str(PYDOC_TOPICS),
                  EVALUATOR_TASK=str(EVALUATOR_TASK), SECRET=str(tmp_path / "secret.txt"),
                  OUTSIDE=str(tmp_path), OTHER_LOG=str(tmp_path / "runs" / "other.log"),
                  SITE_PACKAGES=str(SITE_PACKAGES))
    result = run(tmp_path, code)
    attempts = report(tmp_path)
    assert result.exit_code == 0 and len(attempts) == 14, result.log.read_text()
    assert refused(attempts) == {}
    assert "digits.csv.gz" in attempts["digits loader"] and "pydoc_data" in attempts["pydoc_data import"]
    assert SECRET not in result.log.read_text() + json.dumps(attempts)
    assert "fence" in result.isolation

    # Unguarded, the first read ends the run: a crash whose evidence names the refused file.
    result = run(tmp_path, f"data = open({str(DIGITS)!r}, 'rb').read()\n")
    judged = verdict(result)
    assert (judged.label, judged.evidence.stage, judged.evidence.frame) == ("crash", "train", "train.py:1 in <module>")
    assert judged.evidence.message == f"PermissionError: sandbox: open of {DIGITS} is not allowed"


def test_writes_outside_the_tree_are_refused_and_nothing_outside_changes(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    (tmp_path / "victim-dir").mkdir()
    (tmp_path / "victim-dir" / "kept.txt").write_text("intact")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = recipe(WRITE_OUTSIDE, OUTSIDE=str(tmp_path), VICTIM=str(victim), VICTIM_DIR=str(tmp_path / "victim-dir"),
                  SITE_PACKAGES=str(SITE_PACKAGES))
    result = run(tmp_path, code)
    attempts = report(tmp_path)
    assert result.exit_code == 0 and len(attempts) == 14, result.log.read_text()
    assert refused(attempts) == {"write inside": "done: 2"}
    assert victim.read_text() == "intact" and (tmp_path / "victim-dir" / "kept.txt").read_text() == "intact"
    assert oct(victim.stat().st_mode)[-3:] != "777"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "runs") == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["trial", "trial.log"]
    assert not (SITE_PACKAGES / "planted.py").exists()
    assert (tmp_path / "runs" / "trial" / "artifact" / "out.txt").read_text() == "ok"


def test_a_fork_bomb_is_refused_at_its_first_fork_and_is_a_labelled_crash(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        code = recipe(FORK_BOMB, PORT=listener.getsockname()[1])
        result = run(tmp_path, code)
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody connected
    attempts = report(tmp_path)
    assert len(attempts) == 10, result.log.read_text()
    assert refused(attempts) == {}
    judged = verdict(result)
    bomb_line = code.splitlines().index("    if os.fork() == 0:") + 1
    assert (judged.label, judged.evidence.frame) == ("crash", f"train.py:{bomb_line} in <module>")
    assert judged.evidence.message == "PermissionError: sandbox: os.fork is not allowed"
    assert running_in(tmp_path / "runs") == []


@needs_namespaces
def test_processes_a_non_python_recipe_forks_all_end_with_it(tmp_path):
    """Without the fence (a shell), the pid namespace and the group kill are the wall."""
    run_dir = tmp_path / "runs" / "trial"
    run_dir.mkdir(parents=True)
    limits = Limits(wall_s=1.5, memory_mb=1024, file_mb=1)
    script = "for i in $(seq 100); do (sleep 60 &); done; echo forked; sleep 60"  # orphans, re-parented
    result = run_command(["bash", "-c", script], run_dir, limits, log_path=tmp_path / "log", grace_s=0.5)
    assert result.timed_out and "forked" in result.log.read_text()
    deadline = time.monotonic() + 5
    while running_in(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running_in(run_dir) == []


def test_filling_the_disk_with_files_under_the_file_limit_is_killed_at_the_disk_budget(tmp_path):
    limits = Limits(wall_s=60, memory_mb=1024, file_mb=4, disk_mb=24)
    # 1 MB every 20 ms at most: between two of the watchdog's samples (DISK_POLL_S apart, twice that on a
    # loaded machine) it can write 2 * DISK_POLL_S / 0.02 MB past the budget, not the 1 GB it could unpaced.
    big = ("import time\ni = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * (1024 * 1024))\n"
           "    i += 1\n    time.sleep(0.02)\n")
    began = time.monotonic()
    result = run(tmp_path, big, limits)
    assert time.monotonic() - began < 20
    assert (result.killed_by, result.signal, result.timed_out) == ("disk_mb", signal.SIGKILL, False)
    assert 24 < result.disk_mb <= 24 + 2 * DISK_POLL_S / 0.02, result.disk_mb
    judged = verdict(result, limits)
    assert (judged.label, judged.evidence.stage) == ("crash", "train")
    assert "over its disk_mb budget of 24 MB" in judged.evidence.message
    assert (judged.evidence.gate, judged.evidence.limit) == ("disk_mb", 24)

    # Empty files fill the disk's inodes: each entry counts, so they meet the same budget.
    shutil.rmtree(tmp_path / "runs")
    result = run(tmp_path, "i = 0\nwhile True:\n    open(f'e{i}', 'w').close()\n    i += 1\n", limits)
    assert result.killed_by == "disk_mb" and result.disk_mb > 24
    assert len(list((tmp_path / "runs" / "trial").iterdir())) < 100_000


def test_sleeping_past_the_budget_is_killed_and_labelled_train_budget_overrun(tmp_path):
    limits = Limits(wall_s=1.0, memory_mb=1024, file_mb=1)
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('sleeping')\ntime.sleep(60)\n"
    began = time.monotonic()
    result = run(tmp_path, code, limits, grace_s=0.5)
    assert time.monotonic() - began < 10
    assert result.timed_out and result.signal == signal.SIGKILL  # it ignored SIGTERM
    judged = verdict(result, limits)
    assert (judged.label, judged.evidence.gate, judged.evidence.limit) == ("train_budget_overrun", "train_s", 1.0)
    assert judged.evidence.measured >= 1.0


def test_killing_its_parent_or_another_process_kills_nothing_but_itself(tmp_path, decoy):
    result = run(tmp_path, recipe(KILL_PARENT, DECOY=decoy.pid, DECOY_GROUP=os.getpgid(decoy.pid)))
    attempts = report(tmp_path)
    assert refused(attempts) == {"kill itself": "done: None"}
    assert decoy.poll() is None
    # Its parent is invisible in its pid namespace (getppid() is 0: its own group, which it may end) or
    # refused by the fence.
    judged = verdict(result)
    assert judged.label == "crash"
    if "pid" in result.isolation:
        assert result.signal == signal.SIGKILL and judged.evidence.message.startswith("killed by SIGKILL")
    else:
        assert judged.evidence.message.startswith("PermissionError: sandbox: os.kill of process")


@needs_namespaces
def test_a_non_python_recipe_cannot_reach_its_parent_or_the_network(tmp_path, decoy):
    """Without the fence (a shell), the namespaces are the wall: no parent, no other process, no network."""
    run_dir = tmp_path / "runs" / "trial"
    run_dir.mkdir(parents=True)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        script = (
            f"(exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED) 2>/dev/null; "
            f"kill -9 {decoy.pid} 2>/dev/null || echo no-decoy; "
            "echo parent=$PPID; kill -9 $PPID; sleep 30"
        )
        result = run_command(["bash", "-c", script], run_dir, LIMITS, log_path=tmp_path / "log")
    log = result.log.read_text()
    assert "CONNECTED" not in log and "no-decoy" in log and "parent=0" in log
    assert result.signal == signal.SIGKILL and result.wall_s < 20  # `kill -9 0`: it ended its own group
    assert decoy.poll() is None


def test_deleting_git_outside_the_tree_is_refused_and_the_repository_stays(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / "README").write_text("x")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout
    result = run(tmp_path, recipe(DELETE_GIT, PROJECT=str(project)))
    attempts = report(tmp_path)
    assert result.exit_code == 0
    assert refused(attempts) == {"own .git": "FileNotFoundError: [Errno 2] No such file or directory: '.git'"}
    assert subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout == head
    assert subprocess.run([*git, "fsck", "--no-progress"], capture_output=True).returncode == 0


def test_a_recipe_allowed_processes_may_start_them_but_still_not_read_outside(tmp_path):
    code = (
        "import subprocess, sys\n"
        "print(subprocess.run([sys.executable, '-c', 'print(open(\"/etc/passwd\").read())'],"
        " capture_output=True, text=True).stderr)\n"
    )
    result = run(tmp_path, code, allow_subprocess=True)
    assert result.exit_code == 0
    assert "PermissionError: sandbox: open of /etc/passwd is not allowed" in result.log.read_text()


def test_without_namespaces_the_run_falls_back_and_says_so_and_the_fence_still_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "UNSHARE", "false")  # an unshare that refuses everything
    sandbox.namespaces.cache_clear()
    try:
        result = run(tmp_path, "print(open('/etc/passwd').read())\n")
    finally:
        sandbox.namespaces.cache_clear()
    assert result.isolation == ("fence",)
    assert result.log.read_text().strip().endswith("PermissionError: sandbox: open of /etc/passwd is not allowed")


def test_a_command_that_would_skip_the_fence_is_refused(tmp_path):
    (tmp_path / "train.py").write_text("print('unfenced')\n")
    for command in (["{python}", "-I", "train.py"], ["{python}", "-B", "-W", "error", "-S", "train.py"]):
        with pytest.raises(ValueError, match="without its sandbox's fence"):
            run_command(command, tmp_path, LIMITS, log_path=tmp_path.parent / "log")


NOSY_MODEL = """import os
from pathlib import Path

def attempt(action):
    try:
        action()
        return "done"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"

def build_model():
    report = {
        "text of the held-out items": attempt(lambda: __import__("pydoc_data.topics", fromlist=["x"]).topics),
        "its source": attempt(lambda: open(PYDOC_TOPICS).read()),
        "another file": attempt(lambda: open(OUTSIDE).read()),
        "delete": attempt(lambda: os.remove(OUTSIDE)),
    }
    raise RuntimeError(repr(report))
"""


@pytest.mark.anyio
async def test_model_code_in_the_evaluator_cannot_read_held_out_text_or_touch_files(tmp_path):
    """The same fence in the evaluator's sandbox: core-mini's answers come from pydoc_data, so model
    code run by predict() must not read it (its inputs are the questions, not the answers)."""
    outside = tmp_path / "outside.txt"
    outside.write_text(SECRET)
    model = NOSY_MODEL.replace("PYDOC_TOPICS", repr(str(PYDOC_TOPICS))).replace("OUTSIDE", repr(str(outside)))
    artifact = write_artifact(tmp_path / "artifact", model_py=model)
    inputs, targets = DIGITS_TASK.module().heldout()
    pool = SandboxPool(tmp_path)
    try:
        result = await pool.run(DIGITS_TASK, artifact, inputs)
    finally:
        await pool.close()
    evaluation = to_evaluation(DIGITS_TASK, result, targets, artifact)
    assert evaluation.failed == "evaluate"
    report = ast.literal_eval(evaluation.error.strip().splitlines()[-1].removeprefix("RuntimeError: "))
    assert refused(report) == {}, report
    assert outside.read_text() == SECRET


# -- the real tasks' recipes still run under the sandbox ------------------------------------------


@pytest.mark.parametrize("task_name, knobs", [("digits-speedrun", {}), ("golf-mini", {"ITERATIONS": 3}),
                                              ("core-mini", {"ITERATIONS": 3})])
def test_the_real_tasks_recipes_run_under_the_sandbox(tmp_path, task_name, knobs):
    """digits-speedrun's whole baseline; the language models' first steps."""
    task = load_task(task_name)
    run_dir = tmp_path / "run"
    shutil.copytree(task.recipe_dir, run_dir)
    task.module().prepare(run_dir)
    for name, value in knobs.items():
        train = run_dir / "train.py"
        train.write_text(set_knob(train.read_text(), name, value))
    budgets = task.spec.budgets
    limits = Limits(wall_s=budgets.train_s, memory_mb=budgets.memory_mb, file_mb=budgets.file_mb,
                    disk_mb=budgets.disk_mb)
    result = run_command(task.spec.command, run_dir, limits, log_path=tmp_path / "train.log")
    log = result.log.read_text()
    assert (result.exit_code, result.timed_out, result.killed_by) == (0, False, None), log[-3000:]
    assert "sandbox" not in log and result.isolation == ("fence", *NAMESPACES)
    assert any((run_dir / "artifact").iterdir())
    assert 0 < result.disk_mb < budgets.disk_mb


# -- through the real executor and evaluator processes ---------------------------------------------

TINY_RECIPE = TINY.recipe_dir / "train.py"


def replace_recipe(code: str) -> str:
    """A diff that replaces the tiny task's train.py with code."""
    old, new = TINY_RECIPE.read_text().splitlines(True), code.splitlines(True)
    return "".join(difflib.unified_diff(old, new, "a/train.py", "b/train.py"))


def trial(campaign: str, trial_id: str, code: str) -> TrialProposed:
    return TrialProposed(
        event_id=f"{trial_id}-proposed", campaign_id=campaign, trial_id=trial_id, specialist="hostile",
        surface="main", parent_id="baseline", hypothesis=f"hostile {trial_id}", diff=replace_recipe(code),
    )


async def last(bus: Bus, subject: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while (event := await bus.last_event(subject)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing on {subject} after {timeout:.0f}s")
        await asyncio.sleep(0.2)
    return event


def test_hostile_trials_through_the_executor_and_evaluator_are_contained_and_labelled(arx_env, tmp_path):
    cluster = Cluster(arx_env, tmp_path / "logs")
    try:
        executor = cluster.start("executor", "executor", "--name", "executor-1")
        cluster.start("evaluator", "evaluator", "--name", "evaluator-1")
        assert cluster.arx("campaign", "start", "--task", "tiny", "--trials", "9", "--campaign", "h").returncode == 0
        home = Path(arx_env["ARX_HOME"])
        hostile = {
            "bomb": "import os, time\nfor _ in range(200):\n    if os.fork() == 0:\n        time.sleep(60)\n",
            "heldout": (f"try:\n    import pydoc_data.topics\nexcept PermissionError as exc:\n    print(exc)\n"
                        f"data = open({str(DIGITS)!r}, 'rb').read()\n"),
            "killer": (f"import os, signal\ntry:\n    os.kill({executor.pid}, signal.SIGKILL)\n"
                       f"except PermissionError as exc:\n    print(exc)\nos.kill(os.getppid(), signal.SIGKILL)\n"),
            "gitrm": f"import shutil\nshutil.rmtree({str(home / 'repos' / 'h')!r})\n",
            "forged": ("import os\nfrom pathlib import Path\nprint('value: -100.0')\nprint('score: -100.0')\n"
                       "out = Path(os.environ['ARX_ARTIFACT_DIR'])\nout.mkdir(parents=True)\n"
                       "(out / 'value.txt').write_text('6.0')\n(out / 'score.txt').write_text('-100.0')\n"),
        }

        async def play():
            async with await Bus.connect(role="admin") as bus:
                baseline = await last(bus, "arx.ev.h.trial.baseline.outcome")
                for trial_id, code in hostile.items():  # in order: the executor takes them one at a time
                    await bus.publish(trial("h", trial_id, code))
                outcomes = {t: await last(bus, f"arx.ev.h.trial.{t}.outcome") for t in hostile}
                finished = {t: await last(bus, f"arx.ev.h.trial.{t}.finished.*") for t in hostile}
                return baseline, outcomes, finished

        baseline, outcomes, finished = asyncio.run(play())
        assert (baseline.label, baseline.score) == ("keep", 5.0)
        got = {t: (o.label, o.evidence.message) for t, o in outcomes.items()}
        assert got["bomb"] == ("crash", "PermissionError: sandbox: os.fork is not allowed")
        assert got["heldout"] == ("crash", f"PermissionError: sandbox: open of {DIGITS} is not allowed")
        assert "sandbox: open of" in finished["heldout"].log_tail and "pydoc_data" in finished["heldout"].log_tail
        assert got["killer"][0] == "crash" and "sandbox: os.kill of process" in finished["killer"].log_tail
        assert got["gitrm"][0] == "crash" and got["gitrm"][1].startswith("PermissionError: sandbox: shutil.rmtree")
        # The forged lines change nothing: the evaluator scores the artifact, 6.0, worse than the incumbent.
        assert (outcomes["forged"].label, outcomes["forged"].score) == ("discard", 6.0)
        assert outcomes["forged"].incumbent_id == "baseline"
        # One executor ran every trial and is still running; the campaign's repository is intact.
        assert executor.poll() is None and {f.executor for f in finished.values()} == {"executor-1"}
        assert all("fence" in f.isolation for f in finished.values())
        assert (home / "repos" / "h" / "HEAD").exists() and cluster.failed() == []
    finally:
        cluster.stop_all()


FILL_THE_DISK = """\
from pathlib import Path

print("filling the disk", flush=True)
for n in range(1000):
    Path(f"fill-{n}").write_bytes(b"x" * (1024 * 1024))
"""


def test_a_run_that_fills_a_small_host_disk_under_its_budget_is_the_hosts_fault(small_disk):
    # 2 MiB of disk under a disk_mb budget of 64: the host had less room than it promised.
    result = run(small_disk, FILL_THE_DISK)
    assert result.exit_code == 1 and result.killed_by is None
    assert "OSError: [Errno 28] No space left on device" in result.log.read_text()
    run_dir = small_disk / "runs" / "trial"
    assert result.host_fault.startswith(f"host fault: the disk under {run_dir} is full (")
    assert result.host_fault.endswith("MB free): the run failed with No space left on device")


def test_a_recipe_that_raises_enospc_on_a_roomy_disk_is_its_own_crash(tmp_path):
    result = run(tmp_path, "import errno, os\nraise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n")
    assert result.exit_code == 1 and result.host_fault is None
    judged = verdict(result)
    assert (judged.label, judged.evidence.stage) == ("crash", "train")
    assert judged.evidence.message == "OSError: [Errno 28] No space left on device"
