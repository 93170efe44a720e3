"""golf-mini recipe: train a byte-level language model for ITERATIONS steps (or until TRAIN_SECONDS
have passed, whichever comes first) and save it as the artifact.

The evaluator (not this script) rounds every weight to int8, zlib-compresses it, counts the artifact's
bytes against the size cap, and measures bits per byte on held-out text this script never sees.
"""

import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from model import build_model

ITERATIONS = 120
TRAIN_SECONDS = 20.0
BATCH_SIZE = 32
LR = 0.002
WEIGHT_DECAY = 0.01
WARMUP_STEPS = 20
WARMDOWN_FRACTION = 0.3
GRAD_CLIP = 1.0
SEED = 0
# The executor's preflight sets ARX_SMOKE: a short run that shows a crash before the full one.
if os.environ.get("ARX_SMOKE"):
    ITERATIONS, TRAIN_SECONDS = 2, 5.0

DATA = Path("data/train.bin")
OUT = Path(os.environ.get("ARX_ARTIFACT_DIR", "artifact"))


def batches(data: torch.Tensor, context: int, generator: torch.Generator):
    while True:
        starts = torch.randint(0, len(data) - context - 1, (BATCH_SIZE,), generator=generator)
        window = torch.stack([data[s : s + context + 1] for s in starts.tolist()]).long()
        yield window[:, :-1], window[:, 1:]


def lr_at(step: int, progress: float) -> float:
    """Linear warmup, then flat, then a linear warmdown over the last part of the run (by steps or by the
    clock, whichever is further along)."""
    warmup = min(1.0, (step + 1) / max(1, WARMUP_STEPS))
    warmdown = min(1.0, (1.0 - progress) / WARMDOWN_FRACTION)
    return LR * warmup * max(warmdown, 0.0)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    data = torch.from_numpy(np.fromfile(DATA, dtype=np.uint8))
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(SEED)
    started, step = time.monotonic(), 0
    for inputs, targets in batches(data, model.context, generator):
        progress = max(step / ITERATIONS, (time.monotonic() - started) / TRAIN_SECONDS)
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        if step % 50 == 0:
            print(f"step {step} train_bpb {loss.item() / math.log(2):.3f} t {time.monotonic() - started:.1f}s")
        step += 1
    print(f"stopped after {step} steps in {time.monotonic() - started:.1f}s")
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy("model.py", OUT / "model.py")
    torch.save(model.state_dict(), OUT / "model.pt")


if __name__ == "__main__":
    main()
