"""The tiny test task: the artifact holds one number, which is the score."""

from pathlib import Path

import numpy as np


def prepare(run_dir: Path) -> None:
    (run_dir / "data").mkdir(exist_ok=True)
    (run_dir / "data" / "seed.txt").write_text("1\n")


def heldout():
    return {"unused": np.zeros(1)}, np.zeros(1)


def predict(artifact_dir: Path, inputs):
    return {"value": np.array([float((artifact_dir / "value.txt").read_text())])}


def metrics(outputs, targets):
    return {"value": float(outputs["value"][0])}
