"""The built-in dataset: scikit-learn's 8x8 handwritten digits (1,797 images, no download).

Zero-shot protocol: digits 0-4 train, 5-9 test. Images are 1x8x8 tensors, pixel / 16 in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from .base import DatasetSpec, TensorDataset, register_dataset


def read_digits(root=None, split: str = "train", train: bool = False, image_size: int | None = None) -> TensorDataset:
    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    targets = data.target.astype(np.int64)
    mask = targets < 5 if split == "train" else targets >= 5
    return TensorDataset(images[torch.from_numpy(mask)], targets[mask])


DIGITS = register_dataset(DatasetSpec(
    name="digits", reader=read_digits, splits=("train", "test"), recall_ks=(1, 2, 4, 8),
    eps=0.1))
