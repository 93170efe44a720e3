"""digits-speedrun's data and evaluator. Trusted code: it is the task, not the recipe.

The held-out images never enter a recipe's tree or process: prepare() writes only the training split,
and the sandboxed predict() receives held-out images without their labels. They are cut in two: half
scores trials (heldout()), half is a second split no keep decision uses (holdout(), `arx audit --holdout`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HELDOUT_FRACTION = 0.3
HOLDOUT_FRACTION = 0.5  # of the held-out images
SPLIT_SEED = 0


def _split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Images and labels of each part: "train", "heldout" and "holdout", each stratified by digit."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)
    train_images, test_images, train_labels, test_labels = train_test_split(
        images, digits.target, test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    heldout_images, holdout_images, heldout_labels, holdout_labels = train_test_split(
        test_images, test_labels, test_size=HOLDOUT_FRACTION, random_state=SPLIT_SEED, stratify=test_labels
    )
    return {"train": (train_images, train_labels), "heldout": (heldout_images, heldout_labels),
            "holdout": (holdout_images, holdout_labels)}


def prepare(run_dir: Path) -> None:
    """Write the training split into a trial's tree (executor side)."""
    train_images, train_labels = _split()["train"]
    (run_dir / "data").mkdir(exist_ok=True)
    np.savez(run_dir / "data" / "train.npz", images=train_images, labels=train_labels.astype(np.int64))


def heldout() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Held-out inputs (given to predict) and targets (kept by the evaluator)."""
    images, labels = _split()["heldout"]
    return {"images": images}, labels


def holdout() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The second held-out split, which no keep decision uses, in the same form."""
    images, labels = _split()["holdout"]
    return {"images": images}, labels


def predict(artifact_dir: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every saved seed on the held-out images (sandboxed: the artifact's model.py is untrusted)."""
    import torch

    sys.path.insert(0, str(artifact_dir))
    from model import build_model  # the artifact's own architecture

    images = torch.from_numpy(inputs["images"])
    predictions = []
    for weights in sorted(artifact_dir.glob("seed*.pt")):
        model = build_model()
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
        with torch.no_grad():
            predictions.append(model(images).argmax(dim=1).numpy())
    return {"predictions": np.stack(predictions) if predictions else np.zeros((0, len(images)), np.int64)}


def metrics(outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, float]:
    predictions = outputs["predictions"]
    if predictions.ndim != 2 or predictions.shape[1] != len(targets):
        raise ValueError(f"predictions of shape {predictions.shape} for {len(targets)} held-out images")
    per_seed = (predictions == targets[None, :]).mean(axis=1) if len(predictions) else np.zeros(0)
    return {
        "accuracy": float(per_seed.mean()) if len(per_seed) else 0.0,
        "accuracy_min": float(per_seed.min()) if len(per_seed) else 0.0,
        "seeds": float(len(per_seed)),
    }
