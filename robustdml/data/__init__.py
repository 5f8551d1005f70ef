"""Datasets in their official layouts, the built-in digits set, samplers and transforms.

>>> from robustdml.data import get_dataset
>>> test = get_dataset("digits", "test")
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from . import cars, cub, digits, fashion, inshop, sop  # noqa: F401  (register the readers)
from .base import (DATASETS, DatasetSpec, ImageListDataset, IndexedDataset, MetricDataset, TensorDataset,
                   register_dataset)
from .sampler import ClassBalancedBatchSampler, PairBatchSampler, RandomBatchSampler


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}") from None


def get_dataset(name: str, split: str, root: str | Path | None = None, train: bool = False,
                image_size: int = 224) -> MetricDataset:
    """Read one split of a dataset. ``train=True`` selects the augmenting training transforms."""
    spec = dataset_spec(name)
    if split not in spec.splits:
        raise DatasetError(f"dataset '{name}' has splits {', '.join(spec.splits)}, not '{split}'")
    dataset = spec.reader(Path(root) if root is not None else None, split, train=train, image_size=image_size)
    if len(dataset) == 0:
        raise DatasetError(f"split '{split}' of dataset '{name}' under {root} is empty")
    return dataset


def evaluation_sets(name: str, root=None, image_size: int = 224) -> tuple[MetricDataset, MetricDataset | None]:
    """The (query, gallery) sets for evaluation; gallery None means leave-one-out within query."""
    spec = dataset_spec(name)
    query = get_dataset(name, spec.query_split, root, image_size=image_size)
    gallery = get_dataset(name, spec.gallery_split, root, image_size=image_size) if spec.gallery_split else None
    return query, gallery


def dataset_info(name: str, root=None) -> dict:
    """Per split: images, classes, and the smallest and largest class id as the files give them."""
    info = {}
    for split in dataset_spec(name).splits:
        ds = get_dataset(name, split, root)
        info[split] = {"images": len(ds), "classes": int(len(set(ds.class_ids.tolist()))),
                       "label_min": int(ds.class_ids.min()), "label_max": int(ds.class_ids.max())}
    return info


__all__ = ["DATASETS", "DatasetSpec", "register_dataset", "MetricDataset", "ImageListDataset", "TensorDataset", "IndexedDataset",
           "ClassBalancedBatchSampler", "PairBatchSampler", "RandomBatchSampler", "dataset_spec", "get_dataset", "evaluation_sets", "dataset_info"]
