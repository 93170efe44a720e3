"""Evaluator-side helpers for tasks whose artifact is a byte-level language model.

The artifact holds model.py with build_model() -> torch module: bytes (B, T) with T <= module.context in,
next-byte logits (B, T, 256) out. Its code is untrusted, so these helpers run inside the sandboxed
predict(), and a model is checked to be causal before its scores mean anything.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

VOCAB = 256
CAUSAL_WINDOWS = 4
CAUSAL_TOLERANCE = 1e-3  # nats; float32 noise is far below it, a look at later bytes far above


def load_model(artifact_dir: Path, state: dict):
    """The artifact's own model.py, built and loaded with `state`, in eval mode."""
    artifact_dir = Path(artifact_dir)
    sys.dont_write_bytecode = True  # scoring must not add files (a __pycache__) to the artifact it sizes
    sys.path.insert(0, str(artifact_dir))  # model.py may import its siblings
    loader = importlib.util.spec_from_file_location("model", artifact_dir / "model.py")
    module = importlib.util.module_from_spec(loader)
    sys.modules["model"] = module  # this artifact's model, not one imported earlier in the process
    loader.loader.exec_module(module)
    model = module.build_model()
    model.load_state_dict(state)
    model.eval()
    context = getattr(model, "context", None)
    if not isinstance(context, int) or context < 1:
        raise ValueError(f"the model's `context` attribute is {context!r}; it must be a positive int (bytes)")
    return model


def causal_gap(model, data: np.ndarray) -> float:
    """How far the predictions before position h move when every byte from h on is replaced.

    0 for a causal model; a model that reads later bytes (no causal mask, mixing across the batch) moves them.
    """
    import torch

    length = min(model.context, len(data) // CAUSAL_WINDOWS)
    half = length // 2
    if half < 1:
        raise ValueError(f"{len(data)} bytes are too few to check that the model is causal")
    windows = torch.from_numpy(data[: CAUSAL_WINDOWS * length].astype(np.int64)).view(CAUSAL_WINDOWS, length)
    changed = windows.clone()
    noise = torch.Generator().manual_seed(0)
    changed[:, half:] = torch.randint(0, VOCAB, (CAUSAL_WINDOWS, length - half), generator=noise)
    with torch.no_grad():
        before = torch.log_softmax(model(windows).float(), dim=-1)[:, :half]
        after = torch.log_softmax(model(changed).float(), dim=-1)[:, :half]
    return float((before - after).abs().max())


def is_causal(gap: float) -> float:
    """The gate value for a measured causal_gap: 1.0 or 0.0."""
    return float(gap <= CAUSAL_TOLERANCE)
