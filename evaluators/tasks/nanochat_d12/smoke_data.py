"""Stand-in data for nanochat-d12, written as karpathy/nanochat's base dir (the folder ARX_NANOCHAT_DATA
names), so that its scripts/base_train.py runs on it unchanged and offline:

    base_data_climbmix/shard_00000.parquet ...  training documents; the last file (by name) is the val split
    tokenizer/tokenizer.pkl, token_bytes.pt      a small BPE (rustbpe, read back by tiktoken) and its byte lengths
    eval_bundle/core.yaml, eval_meta_data.csv,   three tiny CORE tasks, one of each kind that nanochat's
        eval_data/pydoc/*.jsonl                  core_eval scores

The text is Python's own documentation (evaluators/pydoc_text.py), one paragraph per document: the
training paragraphs make the training shards and the tokenizer, the held-out ones the val shard, and the
final held-out part (the audit's holdout) the CORE items, so no CORE item is also validation text.

Smoke data: proves the plumbing, not the paper's numbers.
"""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

from evaluators.pydoc_text import split

FOLDER_VARIABLE = "ARX_NANOCHAT_DATA"

SHARD_DIR = "base_data_climbmix"
TRAIN_SHARDS = 3
VAL_SHARD = 6542  # the index of nanochat's real val shard: the last name, as its dataset.py pins it
ROW_GROUP = 16  # documents per row group: the val shard keeps one row group or more for each of 8 ranks
# nanochat's own split pattern and special tokens (nanochat/tokenizer.py), specials numbered after the merges.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
SPECIAL_TOKENS = ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                  "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")
VOCAB_SIZE = 2048  # specials included: ~300 KB of training text is far too little for nanochat's 32768
CORE_ITEMS = 48  # per task: the end of a smoke run evaluates every one


def write(folder: Path) -> None:
    """Write the stand-in base dir into folder, replacing what an earlier write put there."""
    folder = Path(folder)
    for name in (SHARD_DIR, "tokenizer", "eval_bundle"):
        shutil.rmtree(folder / name, ignore_errors=True)  # a stale extra shard would become the val split
    text = split()
    write_shards(folder / SHARD_DIR, text.train, text.heldout)
    write_tokenizer(folder / "tokenizer", text.train)
    write_eval_bundle(folder / "eval_bundle", prose(text.holdout)[:CORE_ITEMS])


def write_shards(shard_dir: Path, train: tuple[str, ...], val: tuple[str, ...]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard_dir.mkdir(parents=True)
    size = -(-len(train) // TRAIN_SHARDS)
    shards = {index: train[index * size:(index + 1) * size] for index in range(TRAIN_SHARDS)}
    shards[VAL_SHARD] = val
    for index, documents in shards.items():
        pq.write_table(pa.table({"text": list(documents)}), shard_dir / f"shard_{index:05d}.parquet",
                       row_group_size=ROW_GROUP, compression="zstd")


def write_tokenizer(tokenizer_dir: Path, train: tuple[str, ...]) -> None:
    """tokenizer.pkl, the pickled tiktoken Encoding nanochat loads, and token_bytes.pt, each token's
    length in bytes (0 for the specials, which bits per byte leaves out)."""
    import rustbpe
    import tiktoken
    import torch

    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(train), VOCAB_SIZE - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    specials = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
    encoding = tiktoken.Encoding(name="rustbpe", pat_str=trainer.get_pattern(), mergeable_ranks=ranks,
                                 special_tokens=specials)
    tokenizer_dir.mkdir(parents=True)
    (tokenizer_dir / "tokenizer.pkl").write_bytes(pickle.dumps(encoding))
    lengths = [0 if i in specials.values() else len(encoding.decode_single_token_bytes(i))
               for i in range(encoding.n_vocab)]
    torch.save(torch.tensor(lengths, dtype=torch.int32), tokenizer_dir / "token_bytes.pt")


def prose(paragraphs: tuple[str, ...]) -> list[str]:
    """The paragraphs that read as sentences (not code, lists or tables), on one line each."""
    lines = [" ".join(p.split()) for p in paragraphs]
    return [line for line in lines if len(line.split()) >= 16 and line[0].isalpha() and line.endswith(".")
            and sum(c.isalpha() or c == " " for c in line) > 0.85 * len(line)]


def write_eval_bundle(bundle: Path, paragraphs: list[str]) -> None:
    """core.yaml, eval_meta_data.csv and one JSONL file per task, as in nanochat's eval_bundle.zip."""
    import yaml

    tasks = core_tasks(paragraphs)
    (bundle / "eval_data" / "pydoc").mkdir(parents=True)
    for task in tasks:
        lines = [json.dumps(item, ensure_ascii=False) + "\n" for item in task["items"]]
        (bundle / "eval_data" / task["dataset_uri"]).write_text("".join(lines), encoding="utf-8")
    config = [{key: value for key, value in task.items() if key not in ("items", "baseline")} for task in tasks]
    (bundle / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": config}, sort_keys=False), encoding="utf-8")
    with open(bundle / "eval_meta_data.csv", "w", newline="", encoding="utf-8") as f:
        table = csv.writer(f)
        table.writerow(["Eval Task", "Task Type", "#shots", "#datapoints", "Random baseline"])
        for task in tasks:
            table.writerow([task["label"], task["icl_task_type"], task["num_fewshot"][0], len(task["items"]),
                            task["baseline"]])


def core_tasks(paragraphs: list[str]) -> list[dict]:
    """One task of each kind, each paragraph cut in two at its middle word: which of 4 second halves
    follows a first half; which of 2 first halves precedes a second half; the paragraph's last word."""
    n = len(paragraphs)
    heads, tails = zip(*(halves(p) for p in paragraphs))
    choice, schema, last_word = [], [], []
    for i, paragraph in enumerate(paragraphs):
        # The wrong options are the neighbours' halves; the right one moves through every position.
        tails_from_here = [tails[(i + k) % n] for k in range(4)]
        choice.append({"query": heads[i], "choices": rotated(tails_from_here, i % 4), "gold": i % 4})
        schema.append({"context_options": rotated([heads[i], heads[(i + 1) % n]], i % 2),
                       "continuation": tails[i], "gold": i % 2})
        context, word = paragraph.rsplit(" ", 1)
        last_word.append({"context": context, "continuation": word})
    return [
        {"label": "pydoc_continuation", "icl_task_type": "multiple_choice", "dataset_uri": "pydoc/continuation.jsonl",
         "num_fewshot": [0], "continuation_delimiter": " ", "items": choice, "baseline": 25.0},
        {"label": "pydoc_context", "icl_task_type": "schema", "dataset_uri": "pydoc/context.jsonl",
         "num_fewshot": [1], "items": schema, "baseline": 50.0},
        {"label": "pydoc_last_word", "icl_task_type": "language_modeling", "dataset_uri": "pydoc/last_word.jsonl",
         "num_fewshot": [3], "items": last_word, "baseline": 0.0},
    ]


def halves(paragraph: str) -> tuple[str, str]:
    words = paragraph.split(" ")
    return " ".join(words[:len(words) // 2]), " ".join(words[len(words) // 2:])


def rotated(options: list[str], gold: int) -> list[str]:
    """The options with the first (the right one) moved to index gold."""
    return options[1:gold + 1] + options[:1] + options[gold + 1:]
