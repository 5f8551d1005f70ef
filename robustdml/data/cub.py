"""CUB-200-2011 from its official layout: ``images.txt``, ``image_class_labels.txt``, ``images/``.

The first half of the classes (1-100) train, the second half (101-200) test.
"""

from __future__ import annotations

import numpy as np

from ..errors import DatasetError
from .base import DatasetSpec, ImageListDataset, parse_int, read_table, register_dataset, require_files, split_classes
from .transforms import image_transform

SOURCE = "CUB_200_2011.tgz from the Caltech-UCSD Birds-200-2011 page"


def read_cub(root, split: str = "train", train: bool = False, image_size: int = 224) -> ImageListDataset:
    root = require_files(root, ["images.txt", "image_class_labels.txt", "images"], "cub", SOURCE)
    paths = {r[0]: r[1] for r in read_table(root / "images.txt", 2)}
    labels = {r[0]: parse_int(r[1], str(root / "image_class_labels.txt")) for r in read_table(root / "image_class_labels.txt", 2)}
    unlabelled = set(paths) - set(labels)
    if unlabelled:
        raise DatasetError(f"{root / 'image_class_labels.txt'} has no label for image ids {sorted(unlabelled)[:5]}")
    ids = sorted(paths, key=lambda i: parse_int(i, str(root / "images.txt")))
    class_ids = np.array([labels[i] for i in ids])
    keep = split_classes(class_ids, split)
    files = [root / "images" / paths[i] for i, k in zip(ids, keep) if k]
    return ImageListDataset(files, class_ids[keep], image_transform(train, image_size))


CUB = register_dataset(DatasetSpec(
    name="cub", reader=read_cub, splits=("train", "test"), recall_ks=(1, 2, 4, 8), eps=8 / 255))
