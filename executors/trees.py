"""Trial code trees as deterministic git commits in a per-host campaign repository.

A trial's tree is the campaign's baseline bundle plus the diffs along its parent chain, all read from
the event log, so any executor on any host can build any trial. Author, dates and message come from
the TrialProposed event, so the same trial has the same commit SHA everywhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import gzip
import io
import os
import re
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

import git

from bus import subjects
from bus.edits import EditProblem, InvalidEdit, check_edit
from bus.events import CampaignStarted, TrialProposed, check_token

__all__ = ["CampaignRepo", "EditProblem", "InvalidEdit", "check_edit", "materialize"]

# Host and user git configuration must not change a tree or a commit.
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}
GIT_TIMEOUT_S = 120
# Notes are commits of their own (refs/notes/commits): arx writes them, whoever proposed the trial.
NOTES_IDENT = {"GIT_AUTHOR_NAME": "arx", "GIT_AUTHOR_EMAIL": "arx@arx", "GIT_COMMITTER_NAME": "arx",
               "GIT_COMMITTER_EMAIL": "arx@arx"}
_FAILED_PATH = re.compile(r"error: (?:patch failed: )?(.+?)(?::\d+|: .*)$", re.MULTILINE)


def trial_ref(trial_id: str) -> str:
    return f"refs/arx/trials/{trial_id}"


class CampaignRepo:
    """One bare repository per campaign and host; mutations hold an fcntl lock beside it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.locked():
            if not (self.path / "HEAD").exists():
                git.Repo.init(self.path, bare=True)
        self.repo = git.Repo(self.path)

    @classmethod
    def for_campaign(cls, home: Path, campaign_id: str) -> "CampaignRepo":
        return cls(Path(home) / "repos" / campaign_id)

    @contextmanager
    def locked(self):
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _git(self, *args: str, index: Path | None = None, **env: str) -> str:
        extra = {**GIT_ENV, **env}
        if index is not None:
            extra["GIT_INDEX_FILE"] = str(index)
        return self.repo.git.execute(["git", *args], env=extra, kill_after_timeout=GIT_TIMEOUT_S)

    def commit_of(self, trial_id: str) -> str | None:
        """The trial's commit SHA, or None when it was never materialized here."""
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"{trial_ref(trial_id)}^{{commit}}")
        except git.GitCommandError:
            return None

    def add_trial(self, proposal: TrialProposed, *, parent: str | None = None, bundle: bytes | None = None) -> str:
        """Commit one trial on top of its parent's commit (or the baseline bundle) and return the SHA.

        A trial already here is left as it is. Raises InvalidEdit when the diff does not apply.
        """
        if (parent is None) == (bundle is None):
            raise ValueError("add_trial needs exactly one of parent (a commit) or bundle (tar.gz bytes)")
        with self.locked(), tempfile.TemporaryDirectory(prefix="arx-tree-") as scratch:
            existing = self.commit_of(proposal.trial_id)
            if existing:
                return existing
            index = Path(scratch) / "index"
            if bundle is not None:
                self._index_bundle(bundle, Path(scratch) / "tree", index)
            else:
                self._git("read-tree", parent, index=index)
            if proposal.diff.strip():
                self._apply(proposal.diff, Path(scratch) / "edit.diff", index)
            tree = self._git("write-tree", index=index)
            sha = self._commit(proposal, tree, parent, Path(scratch) / "message")
            self._git("update-ref", trial_ref(proposal.trial_id), sha)
            return sha

    def _index_bundle(self, bundle: bytes, tree_dir: Path, index: Path) -> None:
        tree_dir.mkdir()
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bundle)), mode="r:") as tar:
            tar.extractall(tree_dir, members=[m for m in tar.getmembers() if m.isfile()], filter="data")
        self._git("--work-tree", str(tree_dir), "add", "--all", "--force", index=index)

    def _apply(self, diff: str, patch_file: Path, index: Path) -> None:
        patch_file.write_text(diff if diff.endswith("\n") else diff + "\n")
        try:
            self._git("apply", "--cached", str(patch_file), index=index)
        except git.GitCommandError as exc:
            stderr = (exc.stderr or "").strip().removeprefix("stderr: '").removesuffix("'").strip()
            failed = _FAILED_PATH.search(stderr)
            raise InvalidEdit(f"the diff does not apply: {stderr}", failed.group(1) if failed else None) from None

    def _commit(self, proposal: TrialProposed, tree: str, parent: str | None, message_file: Path) -> str:
        name = re.sub(r"[<>\n\0]", "", proposal.specialist).strip() or "unknown"
        date = f"{int(parse_time(proposal.occurred_at).timestamp())} +0000"
        hypothesis = proposal.hypothesis.replace("\0", "").strip() or "(no hypothesis)"
        # From a file, not `-m`: past about 128 KiB an argument is "Argument list too long". The file
        # holds what `-m` made (the text and a newline), so a trial's SHA is the same as it always was.
        message = f"{proposal.trial_id}: {hypothesis.splitlines()[0]}\n\n{hypothesis}\n"
        message_file.write_bytes(message.encode("utf-8", "surrogateescape"))
        ident = {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": f"{name}@arx",
            "GIT_AUTHOR_DATE": date,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": f"{name}@arx",
            "GIT_COMMITTER_DATE": date,
        }
        parents = ["-p", parent] if parent else []
        return self._git("commit-tree", "--no-gpg-sign", tree, *parents, "-F", str(message_file), **ident)

    def annotate(self, sha: str, note: str, *, tags: list[str] = (), branches: list[str] = ()) -> None:
        """Attach the outcome to a trial's commit as a git note (the commit, and its SHA, stay as executors
        made them), and point tags or branches at it; run again, it replaces what it wrote before."""
        with self.locked(), tempfile.TemporaryDirectory(prefix="arx-note-") as scratch:
            note_file = Path(scratch) / "note"
            note_file.write_bytes(note.encode("utf-8", "surrogateescape"))
            self._git("notes", "add", "--force", "-F", str(note_file), sha, **NOTES_IDENT)
            for tag in tags:
                self._git("tag", "--force", tag, sha)
            for branch in branches:
                self._git("branch", "--force", branch, sha)

    def export(self, commit: str, dest_dir: Path) -> Path:
        """Write the commit's files into dest_dir, which must not exist yet; no .git comes along."""
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True)
        archive = self.repo.git.execute(
            ["git", "archive", "--format=tar", commit],
            env=GIT_ENV,
            stdout_as_string=False,
            kill_after_timeout=GIT_TIMEOUT_S,
        )
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            tar.extractall(dest_dir, filter="data")
        return dest_dir


def parse_time(stamp: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(stamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


async def materialize(bus, repo: CampaignRepo, proposal: TrialProposed, started: CampaignStarted) -> str:
    """The trial's commit SHA, first building it and any ancestors this repo lacks from the log."""
    missing: list[TrialProposed] = []  # the proposal first, then its ancestors up to one that exists
    trial = proposal
    while (sha := repo.commit_of(trial.trial_id)) is None:
        missing.append(trial)
        if trial.parent_id is None:
            break
        trial = await _proposal(bus, trial, seen={t.trial_id for t in missing})
    for trial in reversed(missing):
        try:
            if trial.parent_id is None:
                bundle = await bus.get_object(started.bundle)
                sha = await asyncio.to_thread(repo.add_trial, trial, bundle=bundle)
            else:
                sha = await asyncio.to_thread(repo.add_trial, trial, parent=sha)
        except InvalidEdit as exc:
            if trial is proposal:
                raise
            raise InvalidEdit(f"ancestor trial {trial.trial_id}: {exc.reason}", exc.path) from None
    return sha


async def _proposal(bus, child: TrialProposed, *, seen: set[str]) -> TrialProposed:
    """The parent's TrialProposed from the log; a missing or circular parent is an invalid edit."""
    parent_id = child.parent_id
    try:
        check_token("parent trial", parent_id)
    except ValueError as exc:
        raise InvalidEdit(str(exc)) from None
    if parent_id in seen:
        raise InvalidEdit(f"trial {parent_id} is its own ancestor")
    parent = await bus.last_event(subjects.trial(child.campaign_id, parent_id, "proposed"))
    if not isinstance(parent, TrialProposed):
        raise InvalidEdit(f"parent trial {parent_id} of {child.trial_id} was never proposed")
    return parent
