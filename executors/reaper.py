"""Run a command as this process's child, and end every process it leaves behind: the sandbox's stand-in
for a pid namespace on a host without one, for recipes that may start processes.

A launcher such as torchrun starts each worker in a session of its own, out of reach of the run's
process group: killed at the wall clock, the launcher would leave its workers running (and holding
their GPUs). As a child subreaper this process keeps every process the command starts below it, the
workers of a launcher that died included: it passes on a stop signal to all of them, kills whatever
is left once the command has ended, and lets the sandbox find them all to kill at once (the sandbox's
SIGKILL ends this process too).

    python -E reaper.py GRACE_S COMMAND...

Run without arx on the path and outside the fence (-E: no PYTHONPATH, so no sitecustomize); the
command gets the environment unchanged. Exits as the command did: with its code, or by its signal.
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36


def descendants(root: int) -> list[int]:
    """The live processes below root, from the parent links in /proc."""
    children: dict[int, list[int]] = {}
    zombies = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    state, parent = stat.read().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue  # gone while we looked
            children.setdefault(int(parent), []).append(int(entry))
            if state == "Z":
                zombies.add(int(entry))
    found, frontier = [], [root]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return [pid for pid in found if pid not in zombies]


def signal_all(sig: int, root: int | None = None) -> None:
    """Signal every live process below root (this one by default)."""
    for pid in descendants(os.getpid() if root is None else root):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):  # gone, or a setuid program's
            pass


def reap() -> None:
    """Collect the exit status of every child that has ended (orphans adopted included)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def main() -> None:
    grace_s, command = float(sys.argv[1]), sys.argv[2:]
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    child = subprocess.Popen(command)

    def stop(signum, frame) -> None:
        signal_all(signum)  # the workers in other sessions too, so they may end cleanly
        threading.Timer(grace_s, signal_all, (signal.SIGKILL,)).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = child.wait()
    while descendants(os.getpid()):
        signal_all(signal.SIGKILL)
        reap()
        time.sleep(0.01)
    if status < 0:  # ended by a signal: end the same way, so the sandbox reports it
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)


if __name__ == "__main__":
    main()
