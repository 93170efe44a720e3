"""Stand-in ("smoke") data for parameter-golf, in the layout and formats of the challenge's own data/
folder (github.com/openai/parameter-golf), so that its train_gpt.py runs on it unchanged:

    tokenizers/fineweb_1024_bpe.model, .vocab            SentencePiece BPE, 1024 pieces, the challenge's settings
    datasets/fineweb10B_sp1024/fineweb_val_000000.bin    validation documents
    datasets/fineweb10B_sp1024/fineweb_train_000000.bin  training documents

The text is Python's own documentation (evaluators/pydoc_text.py), one document per paragraph: the
held-out paragraphs (heldout, then holdout) are the validation split, the training paragraphs train the
tokenizer and make the training split. A shard is 256 little-endian int32 (magic, version, token count,
zeros) then the tokens as little-endian uint16; a document is BOS then its pieces, with no EOS.

Smoke data: proves the plumbing, not the paper's numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluators.pydoc_text import split

FOLDER_VARIABLE = "ARX_PARAMETER_GOLF_DATA"
DATASET = Path("datasets") / "fineweb10B_sp1024"
TOKENIZER = Path("tokenizers") / "fineweb_1024_bpe"  # .model and .vocab
SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
# The challenge's tokenizer settings; one thread so that the model comes out byte for byte the same.
TRAINER = dict(model_type="bpe", vocab_size=1024, character_coverage=0.999, byte_fallback=True,
               split_digits=True, normalization_rule_name="nmt_nfkc", add_dummy_prefix=False,
               pad_id=0, bos_id=1, eos_id=2, unk_id=3, hard_vocab_limit=False, num_threads=1, minloglevel=2)


def write(folder: Path) -> None:
    """Write the stand-in data into folder (created if need be), replacing an earlier stand-in there."""
    import sentencepiece as spm

    folder = Path(folder)
    text = split()
    (folder / DATASET).mkdir(parents=True, exist_ok=True)
    (folder / TOKENIZER).parent.mkdir(parents=True, exist_ok=True)
    # Trained on the training text only, so the validation text stays unseen (the challenge trains on all
    # of its documents).
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.train), model_prefix=str(folder / TOKENIZER),
                                   **TRAINER)
    tokenizer = spm.SentencePieceProcessor(model_file=str(folder / TOKENIZER.with_suffix(".model")))
    for name, paragraphs in (("val", text.heldout + text.holdout), ("train", text.train)):
        write_shard(folder / DATASET / f"fineweb_{name}_000000.bin", tokens(tokenizer, paragraphs))


def tokens(tokenizer, documents: tuple[str, ...]) -> np.ndarray:
    """BOS and the pieces of each document, one stream (tokenizer: a SentencePieceProcessor)."""
    stream = []
    for pieces in tokenizer.encode(list(documents)):
        stream += [tokenizer.bos_id(), *pieces]
    return np.array(stream, dtype="<u2")


def write_shard(path: Path, shard: np.ndarray) -> None:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = SHARD_MAGIC, SHARD_VERSION, len(shard)
    path.write_bytes(header.tobytes() + shard.tobytes())
