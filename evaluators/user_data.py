"""The user's own folders for the official tasks: a checkout and its data, named by environment variables.

Read on the host that needs them (the executor's prepare, the campaign's bundle), never shipped in
an event. Data is linked into a trial's tree, not copied: the paths are frozen, so no edit writes
through them.
"""

from __future__ import annotations

import os
from pathlib import Path


def env_folder(variable: str) -> Path | None:
    """The folder the variable names, or None when it is unset."""
    value = os.environ.get(variable, "")
    return Path(value).expanduser() if value else None


def user_folder(variable: str, *, default: Path | None = None, needs: tuple[str, ...] = (), setup: str = "") -> Path:
    """The folder `variable` names (else `default`), holding every entry of `needs`; otherwise a
    ValueError that says which variable to set and how to make the missing data (`setup`)."""
    folder = env_folder(variable) or default
    if folder is None:
        raise ValueError(f"set {variable} to the folder it names (see README.md, 'Real tasks on GPUs')")
    missing = [name for name in needs if not (folder / name).exists()]
    if not folder.is_dir() or missing:
        what = f"it has no {', '.join(missing)}" if folder.is_dir() else "it is not a folder"
        raise ValueError(f"{variable}: {folder}: {what}. {setup}".strip())
    return folder


def link_into(run_dir: Path, name: str, target: Path) -> None:
    """run_dir/name becomes a link to target."""
    link = Path(run_dir) / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.resolve(), target_is_directory=target.is_dir())
