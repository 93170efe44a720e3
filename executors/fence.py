"""An audit-hook fence around untrusted Python code: files only where a policy allows, no network, no
new processes, signals only to itself, native libraries only from the Python installation.

Both sandboxes use it. The executor puts it up in every Python process a recipe starts, before the
recipe's first line (executors/recipe_site/sitecustomize.py reads the policy from ARX_FENCE); the
evaluator's sandbox child puts it up before a model's predict() runs. A refused call raises
PermissionError("sandbox: ..."), so the attempt ends the run with a traceback that says what was refused.

What it is not: a security boundary. An audit hook sees what Python code asks the interpreter for, not
what native code does. ctypes is narrowed for recipes (only libraries inside the Python installation, no
symbols looked up in the process itself) but a called function or a rewritten byte of memory goes around it;
so do a compiled extension or `torch.ops.load_library` of a .so the recipe wrote, `torch.from_file`,
and Python code that finds the hook's own state and changes it. The walls are the operating system's:
rlimits, its own process group, a scrubbed environment, the executor's watchdogs, and where the host
allows them a network namespace with no interfaces and a pid namespace in which no other process exists
(executors/sandbox.py). The fence turns the plain attempts into a clear, labelled failure.
"""

from __future__ import annotations

import marshal
import os
import sys
import threading
# Bound here, so that a recipe that replaces os.path.realpath or os.getpid does not change the checks.
from os import fsdecode, getcwd, getpgrp, getpid, lstat, readlink
from os.path import isabs, isdir, normpath, realpath
from stat import S_ISDIR, S_ISLNK


class _Area:
    """Folders given by their real paths: `path in area` when path is one of them or lies inside one."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, folders):
        real = [realpath(folder) for folder in folders]
        self.exact = frozenset(real)
        self.prefixes = tuple(folder.rstrip("/") + "/" for folder in real)

    def __contains__(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)


ENV = "ARX_FENCE"
CODE_SUFFIXES = (".py", ".pyc", ".so")
# Data sets that ship inside the Python installation: the held-out sources of the CPU tasks.
BUNDLED_DATA = ("sklearn/datasets/data", "pydoc_data")
# Always usable, read and write.
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
# Readable facts about the machine that libraries look up, and of the process's own /proc/<pid> files
# (torch reads its maps) those in OWN_PROC: not its fd/, cwd or root, links that lead anywhere.
SYSTEM_INFO = _Area(("/proc/cpuinfo", "/proc/meminfo", "/sys/devices/system/cpu"))
OWN_PROC = ("maps", "status", "stat", "statm", "cgroup", "limits")
WRITE_MODES = frozenset("wax+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
NETWORK_EVENTS = (
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr",
)
PROCESS_EVENTS = (
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn",
)
# Links could make a path inside the fence name a file outside it.
ALWAYS_REFUSED = ("os.symlink", "os.link", "signal.pthread_kill", "ctypes.dlsym/handle")
# Events that change the file system: event -> its (path argument, dir_fd argument or None) positions.
CHANGES = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.rename": ((0, 2), (1, 3)),
    "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.truncate": ((0, None),),
    "os.chflags": ((0, None),), "os.lchflags": ((0, None),), "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),), "shutil.rmtree": ((0, 1),), "sqlite3.connect": ((0, None),),
}
NATIVE_EVENTS = ("ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function")
LIBRARIES = ("none", "installed", "any")
MAX_GENERATIONS = 64  # how far up the parent links a signal's target may be from the recipe
MAX_FOLDERS = 4096  # resolved folders remembered (an import opens hundreds of files in a few folders)


def policy_env(
    *, writable, readable=(), sealed=(), read_suffixes=None, processes=False, sockets=False, libraries="none",
    any_signal=False,
) -> str:
    """A fence's arguments as one environment value (marshal: decoding it needs no import)."""
    policy = {
        "writable": tuple(map(str, writable)), "readable": tuple(map(str, readable)),
        "sealed": tuple(map(str, sealed)), "read_suffixes": read_suffixes,
        "processes": processes, "sockets": sockets, "libraries": libraries, "any_signal": any_signal,
    }
    return marshal.dumps(policy).hex()


def python_roots() -> list[str]:
    """Where the interpreter's libraries, installed packages and their commands live (not the whole
    prefix: a system Python's prefix is /usr). The commands are there for launchers such as torchrun,
    a script the interpreter has to read."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib", "scripts")}
    roots.update(site.getsitepackages())
    prefixes = (sys.prefix, sys.base_prefix)
    roots.update(p for p in sys.path if p and _inside(p, prefixes))  # e.g. lib/python311.zip
    return sorted(roots)


def bundled_data(roots: list[str]) -> list[str]:
    return sorted({os.path.join(root, data) for root in roots for data in BUNDLED_DATA})


def refuse(what: str) -> PermissionError:
    return PermissionError(f"sandbox: {what} is not allowed")


class Fence:
    """The audit hook: `sys.addaudithook(Fence(writable=[...], ...).hook)`; refuses by raising PermissionError.

    writable: folders to read, write, create and delete in; readable: folders to read only; sealed:
    never opened, even inside readable; read_suffixes: if given, the only files readable in readable;
    processes: may start processes; sockets: may use sockets; libraries: what ctypes may load and look
    up, "none", "installed" (files in readable, by path) or "any" (for code allowed processes anyway:
    torchrun loads libc by name); any_signal: may signal any process it sees, for a recipe in a pid
    namespace of its own, where every process is one it started; else only itself, its own group and
    the processes it started (torchrun ends its workers' process groups when one of them fails).
    """

    def __init__(
        self, *, writable, readable=(), sealed=(), read_suffixes=None, processes=False, sockets=False,
        libraries="none", any_signal=False,
    ):
        if libraries not in LIBRARIES:
            raise ValueError(f"libraries must be one of {LIBRARIES}, not {libraries!r}")
        self.writable = _Area(writable)
        self.readable = _Area(readable)
        self.sealed = _Area(sealed)
        self.read_suffixes = tuple(read_suffixes) if read_suffixes is not None else None
        self.libraries = libraries
        self.processes = processes
        refused = ALWAYS_REFUSED + (() if processes else PROCESS_EVENTS) + (() if sockets else NETWORK_EVENTS)
        # One dict lookup per audited event: most events (imports, compiles) are not ours.
        self.checks = {event: self._refused for event in refused}
        self.checks.update({event: self._change for event in CHANGES})
        self.checks.update({event: self._ctypes for event in NATIVE_EVENTS})
        self.checks.update({"open": self._open, "os.listdir": self._list, "os.scandir": self._list})
        if not any_signal:
            self.checks.update({"os.kill": self._kill, "os.killpg": self._killpg})

        # Set in a thread while the fence reads /proc itself (_started_by_me): per thread, so that no
        # other thread's events pass unchecked meanwhile.
        self._own_read = threading.local()
        self.hook = self._hook()

    def _hook(self):
        """The function to pass to sys.addaudithook: a closure, as every audited event goes through it."""
        get = self.checks.get
        own_read = self._own_read

        def hook(event: str, args: tuple) -> None:
            check = get(event)
            if check is not None and not getattr(own_read, "active", False):
                check(event, args)

        return hook

    # -- files ------------------------------------------------------------------------------------

    def _open(self, event: str, args: tuple) -> None:
        path, mode, flags = args[:3]
        if isinstance(path, int):
            return  # an already-open descriptor: nothing new is reached
        real, folder = _resolve(path)
        writing = (isinstance(mode, str) and not WRITE_MODES.isdisjoint(mode)) or bool((flags or 0) & WRITE_FLAGS)
        if writing:
            self._check_write(real, f"open of {real} for writing")
        elif not self._may_read(real) or (folder and real not in self.writable):
            # A folder's descriptor would let `open(name, dir_fd=...)` reach past these checks.
            raise refuse(f"open of {real}")

    def _list(self, event: str, args: tuple) -> None:
        path = args[0] if args[0] is not None else "."
        if isinstance(path, int):
            return
        real = _resolve(path)[0]
        if not self._may_read(real, listing=True):
            raise refuse(f"listing {real}")

    def _change(self, event: str, args: tuple) -> None:
        for path_at, dir_fd_at in CHANGES[event]:
            if not isinstance(args[path_at], int):
                dir_fd = args[dir_fd_at] if dir_fd_at is not None and dir_fd_at < len(args) else None
                real = _resolve(args[path_at], dir_fd)[0]
                self._check_write(real, f"{event} on {real}")

    def _check_write(self, real: str, what: str) -> None:
        if real in DEVICES or (real in self.writable and real not in self.sealed):
            return
        raise refuse(what)

    def _may_read(self, real: str, listing: bool = False) -> bool:
        if real in self.sealed and not (listing or _package_marker(real)):
            return False
        if real in self.writable or real in DEVICES or real in SYSTEM_INFO:
            return True
        if real.startswith("/proc/") and real in [f"/proc/{getpid()}/{name}" for name in OWN_PROC]:
            return True
        if real not in self.readable:
            return False
        return listing or self.read_suffixes is None or real.endswith(self.read_suffixes)

    # -- processes, signals, network, native code -------------------------------------------------

    def _refused(self, event: str, args: tuple) -> None:
        raise refuse(event)

    def _kill(self, event: str, args: tuple) -> None:
        # 0 and -pgrp: its own process group; -pid: the group a process it started leads.
        if args[0] not in (0, getpid(), -getpgrp()) and not self._started_by_me(abs(args[0])):
            raise refuse(f"os.kill of process {args[0]}")

    def _killpg(self, event: str, args: tuple) -> None:
        if args[0] not in (0, getpgrp()) and not self._started_by_me(args[0]):
            raise refuse(f"os.killpg of group {args[0]}")

    def _started_by_me(self, pid: int) -> bool:
        """Whether this process started pid, or a process it started did (parent links in /proc)."""
        if not self.processes:
            return False
        me = getpid()
        self._own_read.active = True
        try:
            for _ in range(MAX_GENERATIONS):
                if pid <= 1:
                    return False
                with open(f"/proc/{pid}/stat", "rb") as stat:
                    pid = int(stat.read().rsplit(b")", 1)[1].split()[1])
                if pid == me:
                    return True
        except (OSError, ValueError, IndexError):
            return False
        finally:
            self._own_read.active = False
        return False

    def _ctypes(self, event: str, args: tuple) -> None:
        if self.libraries == "any":
            return
        if self.libraries == "none":
            raise refuse(event)
        if event == "ctypes.dlopen":
            # None is the process itself: `import ctypes` opens it for ctypes.pythonapi; its symbols
            # (libc's fork and kill among them) stay out of reach below.
            if args[0] is not None and not self._library(args[0]):
                raise refuse(f"loading the library {args[0]}")
        elif event == "ctypes.dlsym":
            library = getattr(args[0], "_name", None)
            if library is None or not self._library(library):
                raise refuse(f"looking up {args[1]!r} in {library or 'the process itself'}")

    def _library(self, name) -> bool:
        """A library file given by its path inside the Python installation (no search by bare name)."""
        name = fsdecode(name)
        real = realpath(name)
        return isabs(name) and real in self.readable and real not in self.sealed


_folders: dict[str, str] = {}  # a folder as named -> its real path


def _resolve(path, dir_fd: int | None = None) -> tuple[str, bool]:
    """The real path an event names, and whether it is a folder.

    A relative path is taken from dir_fd when the event gives one, else from the working directory.
    "open" does not say which folder descriptor a relative path starts from, so no relative path may
    climb out of where it starts.
    """
    path = fsdecode(path)
    if not isabs(path):
        if normpath(path).split("/")[0] == "..":
            raise refuse(f"the relative path {path} (which climbs out of its folder; use an absolute path)")
        # Events give dir_fd -1 (or None) for "the working directory".
        path = (readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None and dir_fd >= 0 else getcwd()) + "/" + path
    head, _, name = path.rpartition("/")
    return _step(_folder(head), name)


def _folder(head: str) -> str:
    """The real path of a folder, remembered: an import opens hundreds of files in a few folders, and
    each folder then costs one lstat instead of one per component of its path."""
    real = _folders.get(head)
    if real is None:
        parent, _, name = head.rpartition("/")
        real = _step(_folder(parent), name)[0] if parent else realpath(head or "/")
        if head.startswith("/proc"):
            return real  # /proc/self leads elsewhere in each process
        if len(_folders) >= MAX_FOLDERS:
            _folders.clear()
        _folders[head] = real
    return real


def _step(real_folder: str, name: str) -> tuple[str, bool]:
    """One more path component below a resolved folder: followed if it is a link."""
    if name in ("", ".", ".."):
        real = realpath(real_folder + "/" + name)
        return real, isdir(real)
    real = real_folder.rstrip("/") + "/" + name
    try:
        mode = lstat(real).st_mode
    except OSError:  # not there (yet): nothing to follow
        return real, False
    if S_ISLNK(mode):
        real = realpath(real)
        return real, isdir(real)
    return real, S_ISDIR(mode)


def _package_marker(real: str) -> bool:
    """A package's __init__ (or its cached bytecode): readable in a sealed folder, so that importing the
    package that holds a data set (sklearn.datasets.data) still works while the data stays closed."""
    folder, _, name = real.rpartition("/")
    return name == "__init__.py" or (folder.endswith("/__pycache__") and name.startswith("__init__.") and
                                     name.endswith(".pyc"))


def _inside(path: str, roots) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def install_from_env() -> None:
    """Put up the fence the executor described in ARX_FENCE (called from the recipe's sitecustomize)."""
    text = os.environ.get(ENV)
    if text:
        policy = marshal.loads(bytes.fromhex(text))
        # This interpreter's own libraries too, should a task's command run another Python than ours.
        policy["readable"] += tuple(p for p in sys.path if p and _inside(p, (sys.prefix, sys.base_prefix)))
        sys.addaudithook(Fence(**policy).hook)
