"""golf-mini's data and evaluator. Trusted code: it is the task, not the recipe.

prepare() writes only the training bytes. predict() runs sandboxed beside the artifact's untrusted
model.py: it rounds the saved weights to int8, zlib-compresses them and restores them from the
compressed bytes before that code is imported, then scores every held-out byte with windows it chooses
and checks the model is causal. metrics() turns the per-byte log-probabilities into bits per byte.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np

from evaluators.bytelm import causal_gap, is_causal, load_model
from evaluators.pydoc_text import split

WEIGHTS = "model.pt"
EVAL_BYTES = 32_768  # the first 32 KiB of the held-out text: scored in a few seconds on one core
BATCH_WINDOWS = 32


def prepare(run_dir: Path) -> None:
    """Write the training bytes into a trial's tree (executor side)."""
    (run_dir / "data").mkdir(exist_ok=True)
    (run_dir / "data" / "train.bin").write_bytes(split().train_bytes())


def heldout() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The held-out bytes: the model reads them (it is a language model) and the evaluator counts them."""
    return _scored(split().heldout_bytes())


def holdout() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The second held-out text, which no keep decision uses (`arx audit --holdout`), scored the same way."""
    return _scored(split().holdout_bytes())


def _scored(text: bytes) -> tuple[dict[str, np.ndarray], np.ndarray]:
    data = np.frombuffer(text[:EVAL_BYTES], dtype=np.uint8).copy()
    return {"bytes": data}, data


# --- int8 + zlib round trip -------------------------------------------------------------------------


def pack_int8(state: dict) -> bytes:
    """A state dict as zlib-compressed int8: floats per row (per tensor below 2-D) with a float32 scale."""
    import torch

    header, chunks = [], []
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        entry = {"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        if tensor.is_floating_point() and tensor.numel():
            rows = tensor.float().reshape(tensor.shape[0] if tensor.ndim >= 2 else 1, -1)
            scale = rows.abs().amax(dim=1) / 127.0
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            quantized = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
            entry["rows"] = rows.shape[0]
            chunks += [scale.numpy().astype("<f4").tobytes(), quantized.numpy().tobytes()]
        else:
            chunks.append(tensor.numpy().tobytes())
        header.append(entry)
    meta = json.dumps(header, separators=(",", ":")).encode()
    return zlib.compress(len(meta).to_bytes(4, "little") + meta + b"".join(chunks), 9)


def unpack_int8(blob: bytes) -> dict:
    """The dequantized state dict back from pack_int8's bytes."""
    import torch

    raw = zlib.decompress(blob)
    meta_len = int.from_bytes(raw[:4], "little")
    offset, state = 4 + meta_len, {}
    for entry in json.loads(raw[4:offset]):
        name, shape, dtype = entry["name"], entry["shape"], getattr(torch, entry["dtype"])
        numel = math.prod(shape)
        if "rows" in entry:
            rows = entry["rows"]
            scale = np.frombuffer(raw, "<f4", rows, offset)
            offset += 4 * rows
            quantized = np.frombuffer(raw, np.int8, numel, offset).reshape(rows, -1)
            offset += numel
            state[name] = torch.from_numpy(quantized * scale[:, None]).reshape(shape).to(dtype)
        else:
            size = numel * torch.empty(0, dtype=dtype).element_size()
            chunk = bytearray(raw[offset : offset + size])
            offset += size
            values = torch.frombuffer(chunk, dtype=dtype) if size else torch.empty(0, dtype=dtype)
            state[name] = values.reshape(shape)
    return state


def code_bytes(artifact_dir: Path) -> int:
    """Every artifact file except the weights counts at its raw size: code, tables, anything smuggled."""
    return sum(p.stat().st_size for p in Path(artifact_dir).rglob("*") if p.is_file() and p.name != WEIGHTS)


def artifact_size(artifact_dir: Path) -> dict[str, int]:
    """What the size gate counts, for predict and for a preflight's size projection."""
    import torch

    state = torch.load(Path(artifact_dir) / WEIGHTS, map_location="cpu", weights_only=True)
    return {"code_bytes": code_bytes(artifact_dir), "model_bytes": len(pack_int8(state))}


# --- scoring ----------------------------------------------------------------------------------------


def window_starts(predicted: int, context: int) -> list[int]:
    """Starts of the windows that score bytes 1..predicted: half-overlapping, so each byte after the
    first window is predicted from at least context // 2 bytes before it."""
    if predicted <= context:
        return [0]
    stride = max(1, context // 2)
    starts = list(range(0, predicted - context + 1, stride))
    if starts[-1] + context < predicted:
        starts.append(predicted - context)
    return starts


def stream_logprobs(model, data: np.ndarray, context: int) -> np.ndarray:
    """log p(data[i] | the up to `context` bytes before it) for i = 1..len(data)-1, in nats."""
    import torch

    predicted = len(data) - 1
    length = min(context, predicted)
    tokens = torch.from_numpy(data.astype(np.int64))
    out = np.full(predicted, np.nan)
    starts = window_starts(predicted, length)
    scored_to = 0  # bytes 1..scored_to have their log-probability
    with torch.no_grad():
        for first in range(0, len(starts), BATCH_WINDOWS):
            batch = starts[first : first + BATCH_WINDOWS]
            windows = torch.stack([tokens[s : s + length + 1] for s in batch])
            logits = model(windows[:, :-1]).float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, windows[:, 1:, None])[..., 0].double().numpy()
            for row, start in enumerate(batch):
                skip = max(0, scored_to - start)
                out[start + skip : start + length] = logp[row, skip:]
                scored_to = start + length
    return out


def predict(artifact_dir: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Score the held-out bytes with the int8-round-tripped weights (sandboxed: model.py is untrusted)."""
    import torch

    torch.set_num_threads(1)
    artifact_dir = Path(artifact_dir)
    state = torch.load(artifact_dir / WEIGHTS, map_location="cpu", weights_only=True)
    blob = pack_int8(state)
    code = code_bytes(artifact_dir)  # counted before the artifact's code runs
    model = load_model(artifact_dir, unpack_int8(blob))
    data = inputs["bytes"]
    return {
        "logprobs": stream_logprobs(model, data, model.context),
        "code_bytes": np.array([code]),
        "model_bytes": np.array([len(blob)]),
        "context": np.array([model.context]),
        "causal_gap": np.array([causal_gap(model, data)]),
    }


def metrics(outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, float]:
    logprobs = np.asarray(outputs["logprobs"], dtype=np.float64)
    if logprobs.shape != (len(targets) - 1,):
        raise ValueError(f"logprobs of shape {logprobs.shape} for {len(targets) - 1} predicted held-out bytes")
    if not np.isfinite(logprobs).all() or (logprobs > 1e-6).any():
        raise ValueError("log-probabilities must be finite and at most 0: the model diverged or is not a distribution")
    code, model = float(outputs["code_bytes"][0]), float(outputs["model_bytes"][0])
    return {
        "val_bpb": float(-logprobs.sum() / math.log(2) / len(logprobs)),
        "total_bytes": code + model,
        "code_bytes": code,
        "model_bytes": model,
        "context": float(outputs["context"][0]),
        "causal": is_causal(float(outputs["causal_gap"][0])),
    }
