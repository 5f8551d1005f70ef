"""Shared pieces of the dataset readers: image lists, class splits, the dataset registry."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DatasetError
from ..registry import Registry

log = logging.getLogger(__name__)


class MetricDataset(Dataset):
    """A labelled image set for deep metric learning.

    Every reader returns one of these. ``labels`` are contiguous (0..C-1) so losses with per-class
    proxies can index them; ``class_ids`` keep the dataset's own ids for reporting.
    Items are ``(image, label)`` with ``image`` a float tensor in [0, 1] of shape (C, H, W).
    """

    labels: np.ndarray
    class_ids: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(len(np.unique(self.labels)))


class ImageListDataset(MetricDataset):
    """Images read from files, converted to RGB (grayscale, CMYK, palette and alpha images too)."""

    def __init__(self, paths: Sequence[Path], class_ids: Sequence[int], transform: Callable | None = None,
                 label_space: Sequence[int] | None = None):
        self.paths = [Path(p) for p in paths]
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.labels = contiguous_labels(self.class_ids, label_space)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"image listed in the index is missing: {path}") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DatasetError(f"cannot read image {path} (corrupt or truncated?): {e}") from None
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class TensorDataset(MetricDataset):
    """Images already in memory as a (N, C, H, W) float tensor in [0, 1]."""

    def __init__(self, images: torch.Tensor, class_ids: Sequence[int], transform: Callable | None = None,
                 label_space: Sequence[int] | None = None):
        self.images = images
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.labels = contiguous_labels(self.class_ids, label_space)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class IndexedDataset(Dataset):
    """Adds each sample's position to its item: ``(image, label, index)``, for methods that route
    samples to ensemble members and evaluators that look up per-sample context."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        return image, label, i


def contiguous_labels(class_ids: np.ndarray, label_space: Sequence[int] | None = None) -> np.ndarray:
    """Map class ids to 0..C-1 in sorted order of ``label_space`` (default: the ids present)."""
    space = np.unique(np.asarray(label_space if label_space is not None else class_ids))
    return np.searchsorted(space, class_ids).astype(np.int64)


def split_classes(class_ids: np.ndarray, split: str) -> np.ndarray:
    """Mask of the samples in ``split`` under the zero-shot protocol: the first half of the sorted
    class ids train, the second half test (CUB 1-100 / 101-200, CARS 1-98 / 99-196)."""
    unique = np.unique(class_ids)
    half = unique[: len(unique) // 2]
    in_train = np.isin(class_ids, half)
    return in_train if split == "train" else ~in_train


def require_files(root: Path | None, files: Sequence[str], dataset: str, source: str) -> Path:
    """Check that ``root`` holds ``files``; otherwise raise an error naming what is missing and
    where the data comes from."""
    if root is None:
        raise DatasetError(f"dataset '{dataset}' needs --root: the folder holding {', '.join(files)} ({source})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; it should hold {', '.join(files)} ({source})")
    missing = [f for f in files if not (root / f).exists()]
    if missing:
        raise DatasetError(
            f"{dataset} under {root} is missing {', '.join(missing)}; expected {', '.join(files)} ({source})")
    return root


def read_table(path: Path, columns: int, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of an index file, with a clear error for a malformed line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if number <= skip or not line.strip():
                continue
            parts = line.split()
            if len(parts) < columns:
                raise DatasetError(f"{path}:{number}: expected {columns} fields, found {len(parts)}: {line.strip()!r}")
            rows.append(parts)
    return rows


def parse_int(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{where}: expected an integer, found {value!r}") from None


@dataclass(frozen=True)
class DatasetSpec:
    """What robustdml knows about a dataset: how to read it and how to evaluate on it.

    ``eps`` is the default budget of the threat model (L∞, pixel units in [0, 1]);
    ``query_split``/``gallery_split`` name the evaluation sets; ``gallery_split=None`` means
    leave-one-out retrieval within the query set.
    """

    name: str
    reader: Callable[..., MetricDataset]
    splits: tuple[str, ...]
    recall_ks: tuple[int, ...]
    eps: float
    query_split: str = "test"
    gallery_split: str | None = None


DATASETS: Registry = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Register a dataset by its spec (a new reader file ends with ``register_dataset(DatasetSpec(...))``)."""
    return DATASETS.register(spec)
