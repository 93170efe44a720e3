"""A trial's tree, rebuilt from the log: the campaign's bundle plus the diffs along its parent chain."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections import OrderedDict

from agents.edits import apply_diffs
from bus import subjects
from bus.connection import Bus
from bus.events import CampaignStarted
from projections import reads
from projections.lineage import Lineage

CACHED_TREES = 32


def bundle_files(data: bytes) -> dict[str, str]:
    """The files of a recipe bundle (a tar.gz as evaluators.spec.Task.bundle writes it)."""
    files = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r") as tar:
        for member in tar.getmembers():
            if member.isfile():
                files[member.name] = tar.extractfile(member).read().decode("utf-8", "surrogateescape")
    return files


class Trees:
    """Trees of one campaign's trials. Trees never change once proposed, so a few are cached."""

    def __init__(self, bus: Bus, lineage: Lineage, campaign_id: str):
        self.bus = bus
        self.lineage = lineage
        self.campaign_id = campaign_id
        self._baseline: dict[str, str] | None = None
        self._cache: OrderedDict[str, dict[str, str]] = OrderedDict()

    async def baseline(self) -> dict[str, str]:
        """The recipe the campaign started from (the CampaignStarted bundle)."""
        if self._baseline is None:
            c = self.campaign_id
            started = await self.bus.last_event(subjects.campaign(c, "started"))
            if not isinstance(started, CampaignStarted):
                raise LookupError(f"campaign {c}: no CampaignStarted event in the log")
            self._baseline = bundle_files(await self.bus.get_object(started.bundle))
        return dict(self._baseline)

    async def tree(self, trial_id: str) -> dict[str, str]:
        """The files of trial_id: the baseline with every diff from the root down to it applied."""
        if trial_id in self._cache:
            self._cache.move_to_end(trial_id)
            return dict(self._cache[trial_id])
        chain, start = self._chain(trial_id)
        files = await self.baseline() if start is None else dict(self._cache[start])
        files = apply_diffs(files, [diff for _, diff in chain])
        self._cache[trial_id] = files
        if len(self._cache) > CACHED_TREES:
            self._cache.popitem(last=False)
        return dict(files)

    def _chain(self, trial_id: str) -> tuple[list[tuple[str, str]], str | None]:
        """(trial, diff) pairs from the oldest uncached ancestor down to trial_id, and the cached
        ancestor they start from (None: the baseline)."""
        chain: list[tuple[str, str]] = []
        seen: set[str] = set()
        current: str | None = trial_id
        while current is not None and current not in self._cache:
            if current in seen:
                raise ValueError(f"trial {trial_id}: its parent chain loops at {current}")
            seen.add(current)
            step = reads.step(self.lineage, self.campaign_id, current)
            if step is None:
                raise LookupError(f"trial {current} (an ancestor of {trial_id}) is not in the lineage")
            chain.append((current, step.diff or ""))
            current = step.parent_id
        chain.reverse()
        return chain, current
