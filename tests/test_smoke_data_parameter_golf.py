"""The parameter-golf stand-in data, read back the way the challenge's train_gpt.py reads its data: shard
headers and sizes, BOS-led documents, the tokenizer's byte counts for val_bpb, and the task's prepare()."""

from __future__ import annotations

import glob
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from evaluators.pydoc_text import split
from evaluators.spec import load_task
from evaluators.tasks.parameter_golf import smoke_data

DATASET = "datasets/fineweb10B_sp1024"
MODEL = "tokenizers/fineweb_1024_bpe.model"
VOCAB_SIZE = 1024
TRAIN_SEQ_LEN = 1024
BOS = 1


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("parameter-golf") / "data"
    smoke_data.write(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(data) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(data / MODEL))


def read_shard(path: Path) -> np.ndarray:
    """A shard as train_gpt.py checks it: 256 int32 of header (magic, version, count), then uint16 tokens."""
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header.size == 256 and header[0] == 20240520 and header[1] == 1
    count = int(header[2])
    assert path.stat().st_size == 256 * 4 + 2 * count
    return np.fromfile(path, dtype="<u2", count=count, offset=256 * 4)


def shards(data: Path, split_name: str) -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(str(data / DATASET / f"fineweb_{split_name}_*.bin")))]


def documents(stream: np.ndarray) -> list[list[int]]:
    """The documents of a token stream, each without its leading BOS."""
    assert stream[0] == BOS
    starts = [*np.flatnonzero(stream == BOS), len(stream)]
    return [stream[a + 1 : b].tolist() for a, b in zip(starts, starts[1:])]


def normalised(paragraph: str) -> str:
    """What nmt_nfkc with SentencePiece's default whitespace handling keeps of this text: NFKC, every run
    of white space (newlines included) one space, none at the ends."""
    return " ".join(unicodedata.normalize("NFKC", paragraph).split())


def byte_luts(sp: spm.SentencePieceProcessor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """train_gpt.py's val_bpb tables: bytes per piece, whether it starts with a space, whether it is a boundary."""
    size = max(sp.vocab_size(), VOCAB_SIZE)
    base, space, boundary = np.zeros(size, np.int64), np.zeros(size, bool), np.ones(size, bool)
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            base[i] = 1
        else:
            space[i] = piece.startswith("▁")
            base[i] = len(piece.removeprefix("▁").encode())
    return base, space, boundary


def test_layout_and_size(data):
    files = {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()}
    assert files == {f"{DATASET}/fineweb_val_000000.bin", f"{DATASET}/fineweb_train_000000.bin", MODEL,
                     MODEL.replace(".model", ".vocab")}
    assert sum((data / f).stat().st_size for f in files) < 10_000_000
    assert "proves the plumbing" in smoke_data.__doc__


def test_shards_hold_bos_led_documents_of_the_vocabulary(data):
    text = split()
    for name, paragraphs in (("val", text.heldout + text.holdout), ("train", text.train)):
        [shard] = shards(data, name)
        stream = read_shard(shard)
        assert stream.max() < VOCAB_SIZE
        assert not np.isin(stream, [0, 2, 3]).any()  # no pad, no EOS (the challenge appends none), no unk
        assert len(documents(stream)) == len(paragraphs)
    # train_gpt.py scores whole sequences of TRAIN_SEQ_LEN, plus one token for the last target.
    assert len(read_shard(shards(data, "val")[0])) > TRAIN_SEQ_LEN + 1


def test_tokenizer_is_the_challenges_kind(tokenizer):
    assert tokenizer.vocab_size() == VOCAB_SIZE
    assert (tokenizer.pad_id(), tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.unk_id()) == (0, 1, 2, 3)
    assert sum(tokenizer.is_byte(i) for i in range(VOCAB_SIZE)) == 256  # byte fallback
    assert tokenizer.encode("2024") == [tokenizer.piece_to_id(d) for d in "2024"]  # digits split


@pytest.mark.parametrize("name", ["val", "train"])
def test_documents_decode_to_their_paragraphs(data, tokenizer, name):
    text = split()
    paragraphs = text.heldout + text.holdout if name == "val" else text.train
    decoded = [tokenizer.decode(doc) for doc in documents(read_shard(shards(data, name)[0]))]
    assert decoded == [normalised(p) for p in paragraphs]


def test_val_bpb_byte_count_is_the_texts(data, tokenizer):
    base, space, boundary = byte_luts(tokenizer)
    assert boundary.nonzero()[0].tolist() == [0, 1, 2, 3]  # only pad, BOS, EOS and unk count no bytes
    stream = read_shard(shards(data, "val")[0]).astype(np.int64)
    previous, target = stream[:-1], stream[1:]
    counted = int((base[target] + (space[target] & ~boundary[previous])).sum())
    text = split()
    paragraphs = text.heldout + text.holdout
    assert counted == sum(len(normalised(p).encode()) for p in paragraphs)
    raw = sum(len(p.encode()) for p in paragraphs)
    assert 0.8 * raw < counted <= raw  # collapsed indentation is all that is lost


def test_a_second_write_gives_the_same_bytes(data):
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    smoke_data.write(data)
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


def test_the_task_links_it_into_a_trial(data, tmp_path, monkeypatch):
    module = load_task("parameter-golf").module()
    assert module.DATA == smoke_data.FOLDER_VARIABLE
    monkeypatch.setenv(smoke_data.FOLDER_VARIABLE, str(data))
    monkeypatch.delenv(module.CHECKOUT, raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    module.prepare(run_dir)
    linked = run_dir / "data"
    assert linked.is_symlink() and linked.resolve() == data.resolve()
    # train_gpt.py's defaults, relative to the trial's tree.
    assert len(shards(run_dir / "data", "train")) == 1 and len(shards(run_dir / "data", "val")) == 1
    assert (run_dir / "data" / MODEL).is_file()
