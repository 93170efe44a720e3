"""The combiner: merges two kept trials of different specialists into one trial, with git's merge.

Both trials descend from a common ancestor; each file is merged three-way (`git merge-file`) and the
result is proposed as a diff against the better of the two. A conflict is a labelled outcome: the
trial is published with the conflicted text and rejected as invalid_edit ("merge conflict in
<path>"), so the lineage records the attempt and no pair is merged twice. Everything it knows comes
from the lineage; in the no-lineage arm there is nothing to merge.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agents.arms import sees_lineage
from agents.base import Context, Proposal, Specialist
from agents.edits import knob_values, tree_diff
from bus.edits import path_in
from projections import reads, views
from projections.views import Trial

GIT_TIMEOUT_S = 30
MAX_KEPT = 20  # the best kept trials whose pairs are considered: the same cost at any campaign size
MAX_DEPTH = 10_000
MERGE_ERROR = 128  # git merge-file: 0..127 conflicts, "negative" (255) on error


@dataclass(frozen=True)
class Merge:
    files: dict[str, str]
    conflicts: list[str]


def merge_file(base: str, ours: str, theirs: str) -> tuple[str, bool]:
    """git merge-file on three texts: the merged text (with conflict markers) and whether it conflicted."""
    with tempfile.TemporaryDirectory(prefix="arx-merge-") as tmp:
        names = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            (Path(tmp) / name).write_bytes(text.encode("utf-8", "surrogateescape"))
            names.append(name)
        try:
            done = subprocess.run(
                ["git", "merge-file", "-p", "-L", "ours", "-L", "base", "-L", "theirs", *names],
                cwd=tmp, capture_output=True, timeout=GIT_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return ours, True
    if done.returncode >= MERGE_ERROR:  # binary content, for example: git cannot merge it
        return ours, True
    return done.stdout.decode("utf-8", "surrogateescape"), done.returncode > 0


def merge_trees(base: Mapping[str, str], ours: Mapping[str, str], theirs: Mapping[str, str]) -> Merge:
    """Three-way merge of two trees (path -> text) against their common ancestor."""
    files, conflicts = {}, []
    for path in sorted(set(base) | set(ours) | set(theirs)):
        b, o, t = base.get(path), ours.get(path), theirs.get(path)
        if o == t or b == t:
            result = o
        elif b == o:
            result = t
        elif o is None or t is None:  # deleted on one side, changed on the other
            result, conflict = o, True
            conflicts.append(path)
        else:
            result, conflict = merge_file(b or "", o, t)
            if conflict:
                conflicts.append(path)
        if result is not None:
            files[path] = result
    return Merge(files, conflicts)


def ancestors(context: Context, trial_id: str) -> list[str]:
    """trial_id and its ancestors, nearest first."""
    return [t.trial_id for t in views.ancestors(context.lineage, context.campaign_id, trial_id, MAX_DEPTH)]


class CombinerSpecialist(Specialist):
    policy = "combiner"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Pairs whose merge changes nothing: a pure function of the log, kept only to save work.
        self._empty: set[tuple[str, str]] = set()

    async def propose(self, context: Context) -> Proposal | None:
        if not sees_lineage(context):
            return None
        for ours, theirs in self._pairs(context):
            proposal = await self._merge(context, ours, theirs)
            if proposal is not None:
                return proposal
            self._empty.add((ours.trial_id, theirs.trial_id))
        return None

    def _pairs(self, context: Context):
        """(better, worse) kept trials of different specialists, best pairs first, never merged before."""
        c = context.campaign_id
        kept = views.kept(context.lineage, c, context.campaign.direction, MAX_KEPT)
        tried = {frozenset(shown) for shown in reads.first_shown(context.lineage, c, self.policy)}
        for i, ours in enumerate(kept):
            for theirs in kept[i + 1 :]:
                pair = (ours.trial_id, theirs.trial_id)
                fresh = frozenset(pair) not in tried and pair not in self._empty
                if fresh and ours.specialist != theirs.specialist:
                    yield ours, theirs

    async def _merge(self, context: Context, ours: Trial, theirs: Trial) -> Proposal | None:
        """The merge of one pair as a proposal, or None when it has nothing to add to either side."""
        ours_chain, theirs_chain = ancestors(context, ours.trial_id), ancestors(context, theirs.trial_id)
        if ours.trial_id in theirs_chain or theirs.trial_id in ours_chain:
            return None  # one already contains the other
        common = next((t for t in ours_chain if t in set(theirs_chain)), None)
        if common is None:
            return None
        ours_files = await context.tree(ours.trial_id)
        theirs_files = await context.tree(theirs.trial_id)
        merge = merge_trees(await context.tree(common), ours_files, theirs_files)
        if merge.files in (ours_files, theirs_files):
            return None
        diff = tree_diff(ours_files, merge.files)
        paths = context.task.spec.paths_of(context.surface)
        changed = [p for p in merge.files.keys() | ours_files.keys() if merge.files.get(p) != ours_files.get(p)]
        if not all(path_in(p, paths) for p in changed):
            return None  # the merge reaches outside this combiner's surface
        return Proposal(
            hypothesis=(
                f"Combine two kept trials: {theirs.trial_id} ({theirs.specialist}) merged into "
                f"{ours.trial_id} ({ours.specialist}), both descending from {common}; their gains may add up."
            ),
            diff=diff,
            parent_id=ours.trial_id,
            params={} if merge.conflicts else knob_values(merge.files, context.task.spec.knobs),
            shown_ids=[ours.trial_id, theirs.trial_id, common],
            rejection=f"merge conflict in {', '.join(merge.conflicts)}" if merge.conflicts else None,
        )
