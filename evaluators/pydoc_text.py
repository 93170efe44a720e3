"""English prose that ships with Python (`pydoc_data.topics`), split once into training and held-out text.

The topics repeat whole sections of each other, so the split is made on deduplicated paragraphs, each
assigned to a side by a hash of its own text (duplicates always land on the same side). A held-out
paragraph that shares a LEAK_WINDOW-byte window with the training text is dropped, so no run of 64 bytes
or more is found on both sides. The held-out paragraphs are then cut in two: the first VALIDATION_BYTES
(`heldout`, what trials are scored on) and the rest (`holdout`, which no keep decision uses: `arx audit
--holdout`), whose paragraphs sharing a window with the first part or the training text, white space
collapsed, are dropped the same way. The text is that of the running interpreter's pydoc_data: the
executor and the evaluator run the same Python.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache

HELDOUT_BUCKETS = 5  # one paragraph in five is held out
VALIDATION_BYTES = 32_768  # the held-out paragraphs that start in these first bytes are the validation part
LEAK_WINDOW = 56  # checked every LEAK_STRIDE bytes: any common run of 64 bytes contains such a window
LEAK_STRIDE = 8
PARAGRAPH_BREAK = "\n\n"


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    heldout: tuple[str, ...]
    holdout: tuple[str, ...]

    def train_bytes(self) -> bytes:
        return PARAGRAPH_BREAK.join(self.train).encode()

    def heldout_bytes(self) -> bytes:
        return PARAGRAPH_BREAK.join(self.heldout).encode()

    def holdout_bytes(self) -> bytes:
        return PARAGRAPH_BREAK.join(self.holdout).encode()


def paragraphs() -> list[str]:
    """Every distinct paragraph of every topic, topics in sorted order."""
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for name in sorted(topics):
        for paragraph in re.split(r"\n[ \t]*\n", topics[name]):
            paragraph = paragraph.strip("\n")
            if paragraph.strip():
                seen.setdefault(paragraph)
    return list(seen)


def _held_out(paragraph: str) -> bool:
    return hashlib.sha256(paragraph.encode()).digest()[0] % HELDOUT_BUCKETS == 0


def _leaking(candidates: list[str], train: bytes) -> set[int]:
    """Indexes of the candidates that share a window with the training bytes: every window of every
    candidate is looked up at every LEAK_STRIDE-th offset of the training bytes. A candidate shorter
    than a common run those windows are sure to find (a heading) is looked up whole, without its indent."""
    owners: dict[bytes, list[int]] = {}
    leaking = set()
    for index, paragraph in enumerate(candidates):
        data = paragraph.encode()
        text = paragraph.strip().encode()  # an indented heading is the same words as the heading
        if len(text) < LEAK_WINDOW + LEAK_STRIDE:
            if text in train:
                leaking.add(index)
            continue
        for i in range(len(data) - LEAK_WINDOW + 1):
            owners.setdefault(data[i : i + LEAK_WINDOW], []).append(index)
    for i in range(0, max(1, len(train) - LEAK_WINDOW + 1), LEAK_STRIDE):
        leaking.update(owners.get(train[i : i + LEAK_WINDOW], ()))
    return leaking


@cache
def split() -> Split:
    every = paragraphs()
    train = tuple(p for p in every if not _held_out(p))
    candidates = [p for p in every if _held_out(p)]
    leaking = _leaking(candidates, PARAGRAPH_BREAK.join(train).encode())
    heldout = [p for i, p in enumerate(candidates) if i not in leaking]
    cut = _starting_before(heldout, VALIDATION_BYTES)
    # Cut between paragraphs, so the validation text begins with the bytes the whole held-out text began with.
    validation, rest = heldout[:cut], heldout[cut:]
    # Compared with their white space collapsed: the topics repeat passages indented or wrapped otherwise.
    seen = PARAGRAPH_BREAK.join(_collapsed(p) for p in (*validation, *train)).encode()
    leaking = _leaking([_collapsed(p) for p in rest], seen)
    return Split(train=train, heldout=tuple(validation),
                 holdout=tuple(p for i, p in enumerate(rest) if i not in leaking))


def _collapsed(paragraph: str) -> str:
    return " ".join(paragraph.split())


def _starting_before(paragraphs: list[str], offset: int) -> int:
    """How many of the paragraphs, joined, start before the byte offset."""
    start = 0
    for count, paragraph in enumerate(paragraphs):
        if start >= offset:
            return count
        start += len(paragraph.encode()) + len(PARAGRAPH_BREAK)
    return len(paragraphs)
