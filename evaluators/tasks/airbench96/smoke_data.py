"""Stand-in ("smoke") data for airbench96: writes train.pt and test.pt into the folder that
ARX_AIRBENCH_DATA names (the checkout's cifar10/), in the layout that airbench96_faster.py caches
CIFAR-10 in, so that the official script runs on it unchanged and offline.

Each file is a torch.save'd dict: 'images', a uint8 tensor (N, 32, 32, 3) in NHWC order as
torchvision's CIFAR10.data; 'labels', an int64 tensor (N,); 'classes', the 10 class names. Only
tensors, a list and strings, so torch.load with weights_only=True reads it.

The images are scikit-learn's handwritten digits (load_digits, shipped inside its wheel: 1797 grey
8x8 images, values 0..16), each pixel blown up to a 4x4 block and copied into all three channels.

smoke data: proves the plumbing, not the paper's numbers.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

FOLDER_VARIABLE = "ARX_AIRBENCH_DATA"

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# The script trains in batches of 1024 and counts len(train) // 1024 steps per epoch, so 1024 train
# images make every step full at the fewest steps per run (one step per epoch, 45 per run). The other
# 773 digits are the test set (one inference chunk, under the script's 2000). load_digits has no
# duplicate images and deals its classes out in turn, so both parts hold every class about evenly.
# Shifted copies to reach 2048 would only double the time of the script's 200 runs.
TRAIN = 1024
SCALE = 32 // 8


def write(folder: Path) -> None:
    """Write train.pt and test.pt into folder (made if missing; existing files are replaced)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = digits()
    save(folder / "train.pt", images[:TRAIN], labels[:TRAIN])
    save(folder / "test.pt", images[TRAIN:], labels[TRAIN:])


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as CIFAR-shaped uint8 images (N, 32, 32, 3) and their int64 labels."""
    data = load_digits()
    grey = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)  # N, 1, 8, 8
    big = F.interpolate(grey, scale_factor=SCALE, mode="nearest")
    pixels = (big * 255 / 16).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).expand(-1, -1, -1, 3), torch.tensor(data.target, dtype=torch.int64)


def save(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    # fresh contiguous copies: torch.save writes a view's whole storage, which would put every digit in both files
    images = images.clone(memory_format=torch.contiguous_format)
    torch.save({"images": images, "labels": labels.clone(), "classes": list(CLASSES)}, path)
