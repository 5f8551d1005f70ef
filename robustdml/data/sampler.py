"""Class-balanced batch sampling: each batch holds ``batch_size / m`` classes with ``m`` images each."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler

from ..errors import ConfigError


class _EpochBatches(Sampler[list[int]]):
    """Batches reproducible per epoch from ``seed``: ``set_epoch`` (as for DistributedSampler)
    reseeds them, so a resumed run sees the same batches; ``num_batches`` per epoch."""

    seed: int = 0
    epoch: int = 0
    num_batches: int = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches


class ClassBalancedBatchSampler(_EpochBatches):
    """Yields batches of indices with ``samples_per_class`` images from each of
    ``batch_size // samples_per_class`` distinct classes.

    A class with fewer than ``samples_per_class`` images is sampled with replacement. The epoch has
    ``len(labels) // batch_size`` batches; ``set_epoch`` (as for DistributedSampler) reseeds it so
    every epoch is reproducible from ``seed``.

    Example:
        >>> sampler = ClassBalancedBatchSampler(labels, batch_size=32, samples_per_class=4, seed=0)
        >>> loader = DataLoader(dataset, batch_sampler=sampler)
    """

    def __init__(self, labels, batch_size: int, samples_per_class: int, seed: int = 0):
        labels = np.asarray(labels)
        if samples_per_class < 1 or batch_size % samples_per_class:
            raise ConfigError(f"batch_size ({batch_size}) must be a multiple of samples_per_class ({samples_per_class})")
        self.classes_per_batch = batch_size // samples_per_class
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if self.classes_per_batch > len(self.by_class):
            raise ConfigError(
                f"batch_size {batch_size} with samples_per_class {samples_per_class} needs "
                f"{self.classes_per_batch} classes per batch, but the training set has {len(self.by_class)}; "
                f"lower batch_size or raise samples_per_class")
        self.batch_size, self.m, self.seed, self.epoch = batch_size, samples_per_class, seed, 0
        self.num_batches = max(1, len(labels) // batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.num_batches):
            batch = []
            for c in rng.choice(len(self.by_class), self.classes_per_batch, replace=False):
                members = self.by_class[c]
                batch.extend(rng.choice(members, self.m, replace=len(members) < self.m).tolist())
            yield batch


class RandomBatchSampler(Sampler[list[int]]):
    """Shuffled batches of a fixed size (the last incomplete one dropped), reproducible per epoch
    from ``seed`` via ``set_epoch`` so a resumed run sees the same batches."""

    def __init__(self, size: int, batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.size, self.batch_size, self.seed, self.epoch = size, min(batch_size, size), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.batch_size

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size].tolist()


class PairBatchSampler(_EpochBatches):
    """SPC-2 batches as RobRank draws them: every training image in turn (shuffled per epoch) is an
    anchor, paired with a random other image of its class; a batch of ``batch_size`` images is
    ``batch_size / 2`` pairs laid out anchor, positive, anchor, positive, ... The epoch has
    ``len(labels) // (batch_size / 2)`` batches; reproducible per epoch from ``seed`` via ``set_epoch``."""

    def __init__(self, labels, batch_size: int, seed: int = 0):
        labels = np.asarray(labels)
        if batch_size < 2 or batch_size % 2:
            raise ConfigError(f"pair batches need an even batch_size (images: 2 per pair), got {batch_size}")
        self.labels, self.pairs, self.seed, self.epoch = labels, batch_size // 2, seed, 0
        self.by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
        lonely = [int(c) for c, members in self.by_class.items() if len(members) < 2]
        if lonely:
            raise ConfigError(f"pair batches need at least 2 images per class; class(es) {lonely} have one")
        self.num_batches = max(1, len(labels) // self.pairs)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        anchors = rng.permutation(len(self.labels))
        for b in range(self.num_batches):
            batch = []
            for a in anchors[b * self.pairs:(b + 1) * self.pairs].tolist():
                members = self.by_class[self.labels[a]]
                other = members[rng.integers(len(members) - 1)]
                partner = other if other != a else members[-1]  # uniform over the class minus the anchor
                batch.extend((a, int(partner)))
            yield batch
