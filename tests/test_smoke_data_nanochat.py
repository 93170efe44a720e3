"""nanochat-d12's smoke data, read back the way karpathy/nanochat reads its base dir: the parquet shards
(sorted names, last = val, by row groups), the pickled tiktoken tokenizer and token_bytes.pt, and the CORE
eval bundle (core.yaml, eval_meta_data.csv, one JSONL per task); then the official task's prepare() links it."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import tiktoken
import torch
import yaml

from evaluators.pydoc_text import split
from evaluators.spec import load_task
from evaluators.tasks.nanochat_d12 import smoke_data

# What nanochat/tokenizer.py defines; the specials are numbered in this order after the merges.
NANOCHAT_SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                     "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]
NANOCHAT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                    r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
ITEM_FIELDS = {"multiple_choice": {"query", "choices", "gold"},
               "schema": {"context_options", "continuation", "gold"},
               "language_modeling": {"context", "continuation"}}
RANKS = 8  # an 8-GPU run strides the row groups by rank: a rank left without one would never yield


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nanochat") / "base"
    smoke_data.write(folder)
    return folder


def parquet_paths(base: Path) -> list[Path]:
    shards = base / "base_data_climbmix"
    return [shards / f for f in sorted(os.listdir(shards)) if f.endswith(".parquet") and not f.endswith(".tmp")]


def row_groups(path: Path) -> list[list[str]]:
    shard = pq.ParquetFile(path)
    return [shard.read_row_group(i).column("text").to_pylist() for i in range(shard.num_row_groups)]


def documents(paths: list[Path]) -> list[str]:
    return [doc for path in paths for group in row_groups(path) for doc in group]


def encoding(base: Path) -> tiktoken.Encoding:
    with open(base / "tokenizer" / "tokenizer.pkl", "rb") as f:
        return pickle.load(f)


def core_tasks(base: Path) -> list[dict]:
    return yaml.safe_load((base / "eval_bundle" / "core.yaml").read_text(encoding="utf-8"))["icl_tasks"]


def items(base: Path, task: dict) -> list[dict]:
    with open(base / "eval_bundle" / "eval_data" / task["dataset_uri"], encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_shards_split_train_and_val_by_file_name(base):
    paths = parquet_paths(base)
    assert len(paths) >= 2
    assert all(re.fullmatch(r"shard_\d{5}\.parquet", path.name) for path in paths)
    assert all(str(pq.read_schema(path).field("text").type) == "string" for path in paths)
    train, val = paths[:-1], paths[-1:]
    assert documents(train) == list(split().train)
    assert documents(val) == list(split().heldout)
    assert all(len(row_groups(path)) >= 2 for path in train)
    assert len(row_groups(val[0])) >= RANKS


def test_tokenizer_is_the_pickled_tiktoken_encoding_nanochat_loads(base):
    enc = encoding(base)
    assert isinstance(enc, tiktoken.Encoding) and enc.name == "rustbpe" and enc._pat_str == NANOCHAT_PATTERN
    merges = enc.n_vocab - len(NANOCHAT_SPECIALS)
    assert enc.n_vocab == smoke_data.VOCAB_SIZE and enc.special_tokens_set == set(NANOCHAT_SPECIALS)
    assert [enc.encode_single_token(token) for token in NANOCHAT_SPECIALS] == list(range(merges, enc.n_vocab))
    assert [len(enc.decode_single_token_bytes(i)) for i in range(256)] == [1] * 256  # every byte has a token
    val = "\n\n".join(documents(parquet_paths(base)[-1:]))
    ids = enc.encode_ordinary(val)
    assert enc.decode(ids) == val
    assert max(ids) < merges
    assert len(ids) < len(val.encode()) / 2  # the merges were learnt: held-out prose takes > 2 bytes a token


def test_token_bytes_count_each_token_and_skip_the_specials(base):
    enc = encoding(base)
    with open(base / "tokenizer" / "token_bytes.pt", "rb") as f:
        token_bytes = torch.load(f, map_location="cpu")
    assert token_bytes.dtype == torch.int32 and token_bytes.shape == (enc.n_vocab,)
    specials = {enc.encode_single_token(token) for token in NANOCHAT_SPECIALS}
    expected = [0 if i in specials else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
    assert token_bytes.tolist() == expected
    assert [i for i, n in enumerate(expected) if n == 0] == sorted(specials)


def test_core_bundle_has_one_task_of_each_kind_with_valid_items(base):
    tasks = core_tasks(base)
    assert sorted(task["icl_task_type"] for task in tasks) == sorted(ITEM_FIELDS)
    with open(base / "eval_bundle" / "eval_meta_data.csv", encoding="utf-8") as f:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
    for task in tasks:
        assert re.fullmatch(r"\S+", task["label"])  # base_train's 'Evaluating: <label> (' line
        assert 0 <= baselines[task["label"]] < 100
        [shots] = task["num_fewshot"]
        data = items(base, task)
        assert 40 <= len(data) <= 60 and shots < len(data)
        for item in data:
            assert set(item) == ITEM_FIELDS[task["icl_task_type"]]
            options = item.get("choices") or item.get("context_options") or []
            assert len(set(options)) == len(options)
            if "gold" in item:
                assert 0 <= item["gold"] < len(options)


def test_core_items_come_from_text_the_model_does_not_train_on(base):
    train = " ".join(" ".join(doc.split()) for doc in split().train)
    for task in core_tasks(base):
        for item in items(base, task):
            assert item.get("query", item.get("context", item.get("continuation"))) not in train


def test_language_modeling_context_tokens_are_a_prefix(base):
    """core_eval asserts that the prompt without the continuation tokenizes to a prefix of the one with it."""
    enc = encoding(base)
    [task] = [task for task in core_tasks(base) if task["icl_task_type"] == "language_modeling"]
    delimiter = task.get("continuation_delimiter", " ")
    for item in items(base, task):
        without = enc.encode_ordinary((item["context"].strip() + delimiter).strip())
        with_it = enc.encode_ordinary(item["context"].strip() + delimiter + item["continuation"])
        assert len(without) < len(with_it) and with_it[:len(without)] == without


def test_writing_again_replaces_the_files_with_the_same_bytes(base):
    before = digests(base)
    (base / "base_data_climbmix" / "shard_09999.parquet").write_bytes(b"stale")  # it would sort last: val
    smoke_data.write(base)
    assert digests(base) == before


def digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_official_task_prepare_links_the_folder(base, tmp_path, monkeypatch):
    module = load_task("nanochat-d12").module()
    assert smoke_data.FOLDER_VARIABLE == module.DATA
    monkeypatch.setenv(smoke_data.FOLDER_VARIABLE, str(base))
    module.prepare(tmp_path)
    cache = tmp_path / ".cache" / "nanochat"
    assert sorted(os.listdir(cache)) == ["base_data_climbmix", "eval_bundle", "tokenizer"]
    for name in os.listdir(cache):
        assert (cache / name).is_symlink() and (cache / name).resolve() == (base / name).resolve()
    assert (cache / "tokenizer" / "tokenizer.pkl").is_file()
