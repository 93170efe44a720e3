"""The airbench96 stand-in data, read back the way airbench96_faster.py reads its cached CIFAR-10:
torch.load of a dict of NHWC uint8 images, int64 labels and class names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from evaluators.spec import load_task
from evaluators.tasks.airbench96 import smoke_data

BATCH = 1024  # the script's training batch: it counts len(train) // 1024 steps per epoch
IMAGE_BYTES = 32 * 32 * 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("airbench") / "cifar10"
    smoke_data.write(folder)
    return folder


def read(path) -> dict:
    """The official format: a dict of exactly these three entries, loadable with weights_only."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert set(data) == {"images", "labels", "classes"}
    return data


@pytest.mark.parametrize("name", ["train.pt", "test.pt"])
def test_each_file_has_the_cifar_layout(folder, name):
    data = read(folder / name)
    images, labels = data["images"], data["labels"]
    assert images.dtype == torch.uint8 and images.shape[1:] == (32, 32, 3)
    assert labels.dtype == torch.int64 and labels.shape == (len(images),)
    assert data["classes"] == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert labels.min() >= 0 and labels.max() <= 9 and len(labels.unique()) == 10
    # the file holds its own images only, not the storage of a larger tensor they were sliced from
    assert images.untyped_storage().nbytes() == images.numel()
    assert (folder / name).stat().st_size < len(images) * (IMAGE_BYTES + 8) + 64 * 1024


def test_sizes_keep_every_step_full_and_stay_small(folder):
    train, test = read(folder / "train.pt"), read(folder / "test.pt")
    assert len(train["images"]) > 0 and len(train["images"]) % BATCH == 0
    assert len(test["images"]) >= 1
    assert sum(path.stat().st_size for path in folder.iterdir()) < 6_000_000


def test_images_are_the_digits_upscaled_in_grey(folder):
    train, test = read(folder / "train.pt"), read(folder / "test.pt")
    images = torch.cat([train["images"], test["images"]])
    assert torch.equal(images[..., 0], images[..., 1]) and torch.equal(images[..., 0], images[..., 2])
    blocks = images[..., 0].reshape(-1, 8, 4, 8, 4).float()
    assert torch.equal(blocks.amin(dim=(2, 4)), blocks.amax(dim=(2, 4)))  # each 8x8 pixel is one 4x4 block
    digits = load_digits()
    back = (blocks.mean(dim=(2, 4)) * 16 / 255).round()
    assert torch.equal(back, torch.tensor(digits.images, dtype=torch.float32))
    assert torch.equal(torch.cat([train["labels"], test["labels"]]), torch.tensor(digits.target))


def test_train_and_test_share_no_image(folder):
    train = {image.numpy().tobytes() for image in read(folder / "train.pt")["images"]}
    test = {image.numpy().tobytes() for image in read(folder / "test.pt")["images"]}
    assert train and test and not train & test


def test_writing_again_replaces_the_files_with_the_same_bytes(folder):
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    (folder / "train.pt").write_bytes(b"stale")
    smoke_data.write(folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_whitening_init_stays_finite(folder):
    """The script fits its first conv to the second moments of the 2x2 patches of the normalised train
    images, dividing by sqrt(eigenvalue + 5e-4). Grey images leave most of the 12 directions empty, so
    their eigenvalues are zero up to rounding, which must stay above -5e-4."""
    images = read(folder / "train.pt")["images"][:5000].permute(0, 3, 1, 2).half() / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    normalised = ((images - mean.half()) / std.half()).float()
    patches = F.unfold(normalised, kernel_size=2).transpose(1, 2).reshape(-1, 12)
    eigenvalues = torch.linalg.eigvalsh(patches.T @ patches / len(patches))
    assert torch.isfinite(eigenvalues).all() and eigenvalues.min() > -5e-4


def test_the_official_task_accepts_the_folder(folder, tmp_path, monkeypatch):
    task = load_task("airbench96").module()
    assert smoke_data.FOLDER_VARIABLE == task.DATA
    monkeypatch.setenv(smoke_data.FOLDER_VARIABLE, str(folder))
    run_dir = tmp_path / "run"
    task.prepare(run_dir)
    assert (run_dir / "cifar10" / "train.pt").resolve() == (folder / "train.pt").resolve()
    assert (run_dir / "cifar10" / "test.pt").resolve() == (folder / "test.pt").resolve()
