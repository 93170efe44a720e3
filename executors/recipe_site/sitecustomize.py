"""Puts the fence (executors/fence.py) up in every Python process of a recipe, before its first line.

The executor puts this folder on the recipe's PYTHONPATH; Python's site module imports sitecustomize
at startup. The fence module is loaded from its file under a private name and kept out of sys.modules,
so the recipe cannot import the running fence and change it. If the fence cannot go up,
the process ends here: a recipe never runs unfenced because of a broken bootstrap.
"""

import os
import sys
from importlib.machinery import SourceFileLoader

_NAME = "_arx_fence"


def _loopback_up() -> None:
    """Bring up the loopback of the recipe's fresh network namespace (where it starts down), for
    recipes allowed processes that talk over it. Reaches nothing outside the namespace."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, struct.pack("16sH", b"lo", 0)))[1]
        if not flags & iff_up:
            fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def _without_fence(hook, fence_file: str):
    """sys.excepthook minus the fence's own frames: it raises from inside its audit hook, and its frames
    would be the deepest of the traceback, the frame an agent is shown as where the recipe broke."""

    def excepthook(kind, value, tb) -> None:
        kept = []
        while tb is not None:
            if tb.tb_frame.f_code.co_filename != fence_file:
                kept.append(tb)
            tb = tb.tb_next
        rebuilt = None
        for entry in reversed(kept):
            rebuilt = type(entry)(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
        hook(kind, value.with_traceback(rebuilt), rebuilt)

    return excepthook


try:
    if os.environ.get("ARX_LOOPBACK") == "1":
        _loopback_up()
    _path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fence.py")
    _fence = type(sys)(_NAME)
    _fence.__file__ = _path
    SourceFileLoader(_NAME, _path).exec_module(_fence)  # never in sys.modules
    _fence.install_from_env()
    sys.excepthook = _without_fence(sys.excepthook, _path)
    if os.getpid() == 1:
        # The first process of a pid namespace ignores SIGTERM unless it has a handler (the kernel
        # shields a namespace's init): end on it like any other process, so a timeout stays polite.
        import _signal

        _signal.signal(_signal.SIGTERM, lambda signum, frame: os._exit(128 + signum))
except BaseException as exc:
    sys.stderr.write(f"arx fence: could not put the sandbox up: {type(exc).__name__}: {exc}\n")
    sys.stderr.flush()
    os._exit(70)
del _NAME, _path, _fence, _loopback_up, _without_fence
