"""Fashion-MNIST (Zalando product photos, 28x28 grayscale, 10 classes; 60,000 train / 10,000 test),
read from the four official IDX files, gzipped or not.

Two protocols:

- ``fashion`` — RobRank's (Zhou et al., ECCV 2020): all 10 classes in both splits, the official
  train/test split, retrieval leave-one-out within the test set, k-means with k = 10.
- ``fashion-zs`` — zero-shot like the other datasets: the official train images of classes 0-4
  train, the official test images of classes 5-9 test.

``--root`` is any folder holding the four files, or torchvision's layout (``FashionMNIST/raw/`` below
it). Without ``--root``, the folder where Debian's package ``dataset-fashion-mnist`` installs them.
Images are 1x28x28 tensors, pixel / 255 in [0, 1], no normalisation, no augmentation (as RobRank).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from .base import DatasetSpec, MetricDataset, contiguous_labels, register_dataset

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
HOW_TO_GET = ("install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist, as root), "
              "or pass --root FOLDER holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
              "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
_IDX_TYPES = {0x08: np.uint8}


class ByteImageDataset(MetricDataset):
    """Images kept as a (N, C, H, W) uint8 array, returned as float tensors in [0, 1]."""

    def __init__(self, images: np.ndarray, class_ids: np.ndarray, label_space=None):
        self.images = torch.from_numpy(np.array(images))  # a writable copy
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.labels = contiguous_labels(self.class_ids, label_space)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index].float().div_(255), int(self.labels[index])


def _find(root: Path, name: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw"):
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format: magic 0x0000TTDD, D big-endian sizes, the data)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read {path} (corrupt or truncated?): {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    dims = data[3]
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if len(data) != header + int(np.prod(shape)):
        raise DatasetError(f"{path} holds {len(data) - header} bytes of data, its header says {int(np.prod(shape))} "
                           f"(shape {shape}): truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def resolve_root(root: Path | None) -> Path:
    if root is None:
        if _find(DEFAULT_ROOT, FILES["train"][0]) is None:
            raise DatasetError(f"Fashion-MNIST not found (no --root, nothing in {DEFAULT_ROOT}): {HOW_TO_GET}")
        return DEFAULT_ROOT
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist: {HOW_TO_GET}")
    return root


@lru_cache(maxsize=4)
def _read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    paths = [_find(root, name) for name in FILES[split]]
    missing = [name for name, path in zip(FILES[split], paths) if path is None]
    if missing:
        raise DatasetError(f"Fashion-MNIST under {root} is missing {', '.join(m + '[.gz]' for m in missing)}: {HOW_TO_GET}")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"Fashion-MNIST under {root}: {len(images)} images of shape {images.shape[1:]} "
                           f"and {len(labels)} labels do not match")
    if labels.max(initial=0) >= len(CLASSES):
        raise DatasetError(f"Fashion-MNIST under {root}: label {labels.max()} out of range 0-9")
    return images, labels.astype(np.int64)


def read_fashion(root=None, split: str = "train", train: bool = False, image_size: int | None = None,
                 zero_shot: bool = False) -> ByteImageDataset:
    images, labels = _read_split(resolve_root(root), split)
    if zero_shot:
        keep = labels < 5 if split == "train" else labels >= 5
        images, labels = images[keep], labels[keep]
    return ByteImageDataset(np.ascontiguousarray(images[:, None]), labels)


def read_fashion_zero_shot(root=None, split: str = "train", train: bool = False, image_size: int | None = None):
    return read_fashion(root, split, train, image_size, zero_shot=True)


# RobRank's 28x28 threat model: L-infinity, eps 77/255 (its rob28 profile and adversarial training).
EPS_28 = 77 / 255

FASHION = register_dataset(DatasetSpec(
    name="fashion", reader=read_fashion, splits=("train", "test"), recall_ks=(1, 2, 4, 8), eps=EPS_28))
FASHION_ZS = register_dataset(DatasetSpec(
    name="fashion-zs", reader=read_fashion_zero_shot, splits=("train", "test"), recall_ks=(1, 2, 4, 8), eps=EPS_28))
