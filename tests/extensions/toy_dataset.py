"""A toy dataset: 8x8 blobs of 8 classes, each class a bright square at its own position; classes
0-3 train, 4-7 test."""

import numpy as np
import torch

from robustdml.data import DatasetSpec, TensorDataset, register_dataset


def read_blobs(root=None, split="train", train=False, image_size=None):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 40)
    images = rng.uniform(0, 0.3, size=(len(labels), 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 4)
        images[i, 0, 4 * r:4 * r + 4, 2 * col:2 * col + 2] += 0.6
    keep = labels < 4 if split == "train" else labels >= 4
    return TensorDataset(torch.from_numpy(images[keep]).clamp(0, 1), labels[keep])


register_dataset(DatasetSpec(name="toy-blobs", reader=read_blobs, splits=("train", "test"), recall_ks=(1, 2), eps=0.1))
