"""CARS196 from its official layout: ``cars_annos.mat`` and ``car_ims/``.

The first half of the classes (1-98) train, the second half (99-196) test; the file's own
train/test flag is a classification split and is not used.
"""

from __future__ import annotations

import numpy as np
from scipy.io import loadmat

from ..errors import DatasetError
from .base import DatasetSpec, ImageListDataset, register_dataset, require_files, split_classes
from .transforms import image_transform

SOURCE = "cars_annos.mat and car_ims.tgz from the Stanford Cars dataset page"


def read_cars(root, split: str = "train", train: bool = False, image_size: int = 224) -> ImageListDataset:
    root = require_files(root, ["cars_annos.mat", "car_ims"], "cars", SOURCE)
    try:
        annotations = np.atleast_1d(loadmat(root / "cars_annos.mat", squeeze_me=True)["annotations"])
        rel_paths = [str(a) for a in annotations["relative_im_path"]]
        class_ids = np.array([int(c) for c in annotations["class"]], dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - scipy raises many kinds on a malformed file; all are the file's fault
        raise DatasetError(f"cannot read {root / 'cars_annos.mat'}: expected an 'annotations' struct with "
                           f"'relative_im_path' and 'class' fields ({e})") from None
    keep = split_classes(class_ids, split)
    files = [root / p for p, k in zip(rel_paths, keep) if k]
    return ImageListDataset(files, class_ids[keep], image_transform(train, image_size))


CARS = register_dataset(DatasetSpec(
    name="cars", reader=read_cars, splits=("train", "test"), recall_ks=(1, 2, 4, 8), eps=8 / 255))
