"""Which devices an executor has, and which executors a trial needs.

An executor serves one device class: "cpu" (the default) or "cuda" with the GPUs it was given
(`--devices cuda:0,cuda:1`) or found (`--devices auto`). Each class pulls proposals from its own
durable consumer, and an executor acks without running any trial whose campaign's task requires
another class, so a trial runs only where its task can run, and each class sees every trial once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

CPU = "cpu"
CUDA = "cuda"
DEVICES_HELP = "the devices to run the starting recipe on: cpu (default), auto, or GPUs like cuda:0,cuda:1"
# A GPU trial also gets these from the executor's environment: where the CUDA libraries are, how NCCL talks.
CUDA_VARIABLES = ("LD_LIBRARY_PATH", "CUDA_HOME")
CUDA_PREFIXES = ("NCCL_",)
SMI_TIMEOUT_S = 10


@dataclass(frozen=True)
class Devices:
    kind: str = CPU
    ids: tuple[str, ...] = ()  # CUDA device ids as CUDA_VISIBLE_DEVICES takes them

    @property
    def names(self) -> list[str]:
        return [f"{self.kind}:{device}" for device in self.ids]

    def env(self) -> dict[str, str]:
        """What a trial on these devices runs with: only its own GPUs are visible."""
        if self.kind == CPU:
            return {}
        passed = {k: v for k, v in os.environ.items() if k in CUDA_VARIABLES or k.startswith(CUDA_PREFIXES)}
        return {**passed, "CUDA_VISIBLE_DEVICES": ",".join(self.ids)}


def device_class(requires: list[str]) -> str:
    """The class of executor that runs a task with these requirements ("cpu" for none)."""
    return "-".join(sorted({str(r) for r in requires})) or CPU


def parse_devices(text: str) -> Devices:
    """`cpu`, `auto`, or a comma-separated list of `cuda:N`."""
    text = text.strip()
    if text in ("", CPU):
        return Devices()
    if text == "auto":
        return detect_devices()
    ids = []
    for item in (part.strip() for part in text.split(",")):
        kind, _, index = item.partition(":")
        if kind != CUDA or not index.isdigit():
            raise ValueError(f"--devices: {item!r} is not cuda:N (give cpu, auto, or a list like cuda:0,cuda:1)")
        ids.append(index)
    if len(set(ids)) != len(ids):
        raise ValueError(f"--devices: {text!r} names a device twice")
    return Devices(CUDA, tuple(ids))


def detect_devices(env: dict[str, str] | None = None) -> Devices:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when it is set, else every GPU nvidia-smi
    lists; CPUs only when there are none."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = tuple(v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1")
        return Devices(CUDA, ids) if ids else Devices()
    smi = shutil.which("nvidia-smi", path=env.get("PATH", os.defpath))
    if smi is None:
        return Devices()
    try:
        listed = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):  # no driver, or it hangs: no GPUs for us
        return Devices()
    ids = tuple(line.strip() for line in listed.splitlines() if line.strip().isdigit())
    return Devices(CUDA, ids) if ids else Devices()
