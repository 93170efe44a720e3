"""core-mini's data and evaluator. Trusted code: it is the task, not the recipe.

Like nanochat's CORE, the model is scored on held-out items of three kinds, each by the likelihood of
candidate continuations under a prompt with few-shot examples:
- multiple choice: a sentence cut inside a word; which of CHOICES word endings (the true one and the
  endings of words cut in other sentences) follows it. Shared context, different continuations.
- schema: which of two contexts (the true one, and one whose unfinished last word comes from another
  sentence) makes the shared ending most likely. Different contexts, shared continuation.
- language modelling: a paragraph cut LM_LETTERS letters before the end of a word; does greedy decoding
  finish the word exactly.
Choices are ranked by the mean log-probability of their continuation bytes, as in CORE. Each family's
accuracy is centered on its random baseline, (acc - baseline) / (1 - baseline), and core_metric is their
mean. Items are built deterministically from held-out paragraphs of pydoc_data that prepare() never
writes into a trial's tree: heldout()'s from the validation part, holdout()'s from the second part.
"""

from __future__ import annotations

import random
import re
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from evaluators.bytelm import causal_gap, is_causal, load_model
from evaluators.pydoc_text import split

WEIGHTS = "model.pt"
FAMILIES = ("multiple_choice", "schema", "language_modeling")
RANDOM_BASELINE = {"multiple_choice": 0.25, "schema": 0.5, "language_modeling": 0.0}
SHOTS = {"multiple_choice": 1, "schema": 1, "language_modeling": 0}
CHOICES = 4
ITEMS_PER_FAMILY = 400  # sampling noise of each family's accuracy about 0.025
MIN_WORD = 6  # words cut are this long or longer, with at least 3 letters on each side of the cut
LM_WINDOW = 160  # bytes of the paragraph before a language-modelling cut
LM_LETTERS = 2  # letters to finish a word with
MAX_SEQUENCE = 256  # bytes of prompt plus continuation; longer items are not made
SEPARATOR = "\n\n"  # between few-shot examples, as between paragraphs in the training text
SEED = 0
BATCH = 32
TIE = 1e-6  # mean log-probabilities closer than this are a tie: float32 noise, not a preference

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"*])")
PROSE = re.compile(r"[A-Za-z0-9 ,.;:()'\"*’“”-]+")
LONG_WORD = re.compile(rf"\b[A-Za-z]{{{MIN_WORD},}}\b")


class Item(NamedTuple):
    family: str
    prompts: tuple[str, ...]  # one per option
    continuations: tuple[str, ...]  # one per option; only these bytes are scored
    answer: int


def prepare(run_dir: Path) -> None:
    """Write the training text into a trial's tree (executor side)."""
    (run_dir / "data").mkdir(exist_ok=True)
    (run_dir / "data" / "train.bin").write_bytes(split().train_bytes())


# --- items ------------------------------------------------------------------------------------------


def prose(paragraph: str) -> str:
    return " ".join(line.strip() for line in paragraph.split("\n"))


def sentences(paragraphs) -> list[str]:
    """Plain prose sentences of 8 to 30 words and at most 120 characters: no code, no tables."""
    found = []
    for paragraph in paragraphs:
        for sentence in SENTENCE_END.split(prose(paragraph)):
            words = sentence.split()
            if 8 <= len(words) <= 30 and sentence.endswith(".") and len(sentence) <= 120 and PROSE.fullmatch(sentence):
                found.append(sentence)
    return found


def cuts(text: str) -> list[tuple[int, int]]:
    """(cut, end of word) for every long word: the cut leaves at least 3 letters on each side."""
    return [(m.start() + 3, m.end()) for m in LONG_WORD.finditer(text)]


def pieces(sentence: str) -> list[tuple[str, str]]:
    """(context, ending) for each long word: the sentence cut inside that word, and the rest of the word."""
    return [(sentence[:cut], sentence[cut:end]) for cut, end in cuts(sentence)]


def shots(rng: random.Random, pool: list[str], exclude: str, family: str) -> list[str]:
    return rng.sample([s for s in pool if s != exclude], SHOTS[family])


def shuffled(rng: random.Random, options: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """The options in a random order and where the first (the true one) went."""
    order = list(range(len(options)))
    rng.shuffle(order)
    return [options[i] for i in order], order.index(0)


def others(rng: random.Random, pool: list[str], sentence: str, count: int, taken: str) -> list[tuple[str, str]]:
    """Cut pieces of `count` other sentences, with endings different from each other and from `taken`."""
    found, endings = [], {taken}
    for other in rng.sample([s for s in pool if s != sentence], len(pool) - 1):
        if len(found) == count:
            break
        piece = rng.choice(pieces(other) or [None])
        if piece and piece[1] not in endings:
            found.append(piece)
            endings.add(piece[1])
    return found


def multiple_choice(rng: random.Random, pool: list[str], sentence: str, piece: tuple[str, str]) -> Item:
    context, truth = piece
    prompt = SEPARATOR.join([*shots(rng, pool, sentence, "multiple_choice"), context])
    wrong = [continuation for _, continuation in others(rng, pool, sentence, CHOICES - 1, truth)]
    options, answer = shuffled(rng, [(prompt, c) for c in [truth, *wrong]])
    return Item("multiple_choice", *zip(*options), answer=answer)


def schema(rng: random.Random, pool: list[str], sentence: str, piece: tuple[str, str]) -> Item | None:
    """Two contexts that differ in the unfinished word before the shared continuation."""
    context, continuation = piece
    head, _, unfinished = context.rpartition(" ")
    ((other_context, _),) = others(rng, pool, sentence, 1, continuation)
    swap = other_context.rpartition(" ")[2]
    if swap == unfinished:
        return None
    swapped = f"{head} {swap}".lstrip()
    demos = SEPARATOR.join(shots(rng, pool, sentence, "schema"))
    options, answer = shuffled(rng, [(f"{demos}{SEPARATOR}{c}", continuation) for c in (context, swapped)])
    return Item("schema", *zip(*options), answer=answer)


def language_modeling_items(paragraphs) -> list[Item]:
    """Every long word of the held-out prose with its last LM_LETTERS letters to guess, and up to
    LM_WINDOW bytes before them."""
    found = []
    for paragraph in paragraphs:
        text = prose(paragraph)
        for _, end in cuts(text):
            cut = end - LM_LETTERS
            window_start = text.find(" ", max(0, cut - LM_WINDOW)) + 1
            context = text[window_start:cut]
            if PROSE.fullmatch(context):
                found.append(Item("language_modeling", (context,), (text[cut:end],), answer=0))
    return found


def fits(item: Item) -> bool:
    return all(len((p + c).encode()) <= MAX_SEQUENCE for p, c in zip(item.prompts, item.continuations))


@cache
def items(paragraphs: tuple[str, ...] | None = None) -> tuple[Item, ...]:
    """The items made from these held-out paragraphs; by default from the validation part, which trials are
    scored on."""
    heldout = split().heldout if paragraphs is None else paragraphs
    pool = sentences(heldout)
    cut = [(sentence, piece) for sentence in pool for piece in pieces(sentence)]  # each long word, once
    rng = random.Random(SEED)
    by_family = {
        "multiple_choice": [multiple_choice(rng, pool, s, piece) for s, piece in cut],
        "schema": [schema(rng, pool, s, piece) for s, piece in cut],
        "language_modeling": language_modeling_items(heldout),
    }
    chosen = []
    for family in FAMILIES:
        candidates = [item for item in by_family[family] if item and fits(item)]
        chosen += rng.sample(candidates, min(ITEMS_PER_FAMILY, len(candidates)))
    return tuple(chosen)


def heldout() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs: every option's bytes and where its continuation starts. Targets: one row per option,
    (item, family, is the answer, length in bytes), kept by the evaluator."""
    return encoded(items())


def holdout() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The same for items made from the second held-out text, which no keep decision uses (`arx audit --holdout`)."""
    return encoded(items(split().holdout))


def encoded(chosen: tuple[Item, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    sequences, starts, rows = [], [], []
    for index, item in enumerate(chosen):
        for option, (prompt, continuation) in enumerate(zip(item.prompts, item.continuations)):
            head, tail = prompt.encode(), continuation.encode()
            sequences.append(head + tail)
            starts.append(len(head))
            rows.append((index, FAMILIES.index(item.family), int(option == item.answer), len(head) + len(tail)))
    inputs = {
        "tokens": np.frombuffer(b"".join(sequences), dtype=np.uint8).copy(),
        "offsets": np.cumsum([0] + [len(s) for s in sequences]).astype(np.int64),
        "continuation_starts": np.array(starts, dtype=np.int64),
    }
    return inputs, np.array(rows, dtype=np.int64)


# --- scoring ----------------------------------------------------------------------------------------


def score_sequences(model, sequences: list[np.ndarray], starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: mean log-probability of its continuation bytes, and whether greedy decoding
    reproduces them all. A sequence longer than the model's context loses bytes on the left."""
    import torch

    keep = model.context + 1
    mean_logprob, greedy = np.zeros(len(sequences)), np.zeros(len(sequences), dtype=np.int8)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    with torch.no_grad():
        for first in range(0, len(order), BATCH):
            batch = order[first : first + BATCH]
            cropped = [sequences[i][-keep:] for i in batch]
            cont = [max(1, int(starts[i]) - (len(sequences[i]) - len(c))) for i, c in zip(batch, cropped)]
            width = max(len(c) for c in cropped)
            padded = torch.zeros(len(batch), width, dtype=torch.long)  # right padding: a causal model ignores it
            for row, c in enumerate(cropped):
                padded[row, : len(c)] = torch.from_numpy(c.astype(np.int64))
            logp = torch.log_softmax(model(padded[:, :-1]).float(), dim=-1)
            for row, (i, c, s) in enumerate(zip(batch, cropped, cont)):
                target = padded[row, s : len(c)]
                predicted = logp[row, s - 1 : len(c) - 1]
                mean_logprob[i] = float(predicted.gather(-1, target[:, None]).double().mean())
                greedy[i] = int(bool((predicted.argmax(dim=-1) == target).all()))
    return mean_logprob, greedy


def predict(artifact_dir: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Score every option of every item (sandboxed: the artifact's model.py is untrusted)."""
    import torch

    torch.set_num_threads(1)
    artifact_dir = Path(artifact_dir)
    model = load_model(artifact_dir, torch.load(artifact_dir / WEIGHTS, map_location="cpu", weights_only=True))
    tokens, offsets = inputs["tokens"], inputs["offsets"]
    sequences = [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    mean_logprob, greedy = score_sequences(model, sequences, inputs["continuation_starts"])
    return {
        "mean_logprob": mean_logprob,
        "greedy": greedy,
        "context": np.array([model.context]),
        "causal_gap": np.array([causal_gap(model, tokens)]),
    }


def centered(accuracy: float, baseline: float) -> float:
    return (accuracy - baseline) / (1.0 - baseline)


def item_credit(scores: np.ndarray, is_answer: np.ndarray) -> float:
    """1 when the answer alone scores best; a tie for best shares the credit, so a constant model
    scores the random baseline exactly."""
    best = scores >= scores.max() - TIE
    return float(best[is_answer.astype(bool)].any()) / int(best.sum())


def metrics(outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, float]:
    mean_logprob = np.asarray(outputs["mean_logprob"], dtype=np.float64)
    greedy = np.asarray(outputs["greedy"])
    if mean_logprob.shape != (len(targets),) or greedy.shape != (len(targets),):
        raise ValueError(f"scores of shapes {mean_logprob.shape}, {greedy.shape} for {len(targets)} options")
    if not np.isfinite(mean_logprob).all() or (mean_logprob > 1e-6).any():
        raise ValueError("log-probabilities must be finite and at most 0: the model diverged or is not a distribution")
    item, family, is_answer, length = targets.T
    result, centered_scores = {}, []
    for code, name in enumerate(FAMILIES):
        credits = []
        for index in np.unique(item[family == code]):
            rows = item == index
            if name == "language_modeling":
                credits.append(float(greedy[rows][0]))
            else:
                credits.append(item_credit(mean_logprob[rows], is_answer[rows]))
        accuracy = float(np.mean(credits)) if credits else 0.0
        result[f"acc_{name}"] = accuracy
        result[f"centered_{name}"] = centered(accuracy, RANDOM_BASELINE[name])
        centered_scores.append(result[f"centered_{name}"])
    context, needed = float(outputs["context"][0]), float(length.max() - 1)
    return {
        "core_metric": float(np.mean(centered_scores)),
        **result,
        "context": context,
        "needed_context": needed,
        "context_ok": float(context >= needed),
        "causal": is_causal(float(outputs["causal_gap"][0])),
    }
