"""Targeted clustering and feature attacks: each sample is pushed toward a target chosen once, with
the whole clean test pool in view (:meth:`Attack.plan`), and the batch reads its targets from
``context.targets``.

Toward a centroid of the clean k-means clustering, maximising the targeted margin
``cos(f(x+δ), c_t) - max_{j != t} cos(f(x+δ), c_j)`` (the targeted form of the Carlini-Wagner margin,
arXiv 1608.04644):

- ``centroid-nearest``: t = the nearest other centroid;
- ``centroid-random``: t = a random other centroid (seeded);
- ``centroid-balanced`` (label-aware): each true class is spread evenly over the k clusters — per
  class, a greedy assignment of its samples to clusters, nearest first, cluster loads within one
  of each other — which destroys the agreement between clusters and classes that NMI measures.

Toward another class's clean embedding in the retrieval gallery, maximising ``cos(f(x+δ), g_t)``:

- ``feature-nearest``: g_t = the nearest clean item of another class;
- ``feature-balanced`` (label-aware): each class's samples spread evenly over the other classes
  (greedy, nearest first), g_t that class's nearest clean item.

The attacker knows the true classes of the images it perturbs (docs/design.md, "Threat model").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import Attack, CleanPool
from .centroid import centroid_margin
from .registry import register_attack


def balanced_assignment(scores: torch.Tensor) -> torch.Tensor:
    """Assign each row to a column so that column loads differ by at most one, greedily, best scores
    first: every column is first filled to floor(n / m) rows, then the rest take one more each.
    ``scores`` (n, m); unavailable pairs are ``-inf``. Returns (n,) column indices."""
    n, m = scores.shape
    # the greedy pass is a Python loop over (row, column) pairs: plain lists, not tensor indexing
    chosen, load = [-1] * n, [0] * m
    for capacity in dict.fromkeys((n // m, -(-n // m))):  # floor, then ceil
        free = torch.tensor([r for r in range(n) if chosen[r] < 0], dtype=torch.long)
        if capacity == 0 or len(free) == 0:
            continue
        width = min(m, len(free))  # a row finds a free column among its top len(free)
        top_scores, top_cols = scores[free].topk(width, dim=1)
        order = torch.argsort(top_scores.flatten(), descending=True)
        for r, c in zip(free[order // width].tolist(), top_cols.flatten()[order].tolist()):
            if chosen[r] < 0 and load[c] < capacity:
                chosen[r] = c
                load[c] += 1
    chosen = torch.tensor(chosen, dtype=torch.long)
    leftover = chosen < 0  # only where every reachable column was unavailable (-inf)
    chosen[leftover] = scores[leftover].argmax(1)
    return chosen


class _CentroidTarget(Attack):
    """Targeted margin toward ``context.targets`` (cluster indices of the clean clustering)."""

    needs = ("centroids", "targets")

    def prepare(self, model, x, context):
        return {"centroids": F.normalize(context.centroids.to(x.device, torch.float32), dim=1),
                "targets": context.targets.to(x.device)}

    def objective(self, embeddings, state):
        return centroid_margin(embeddings, state["centroids"], state["targets"])


@register_attack
class CentroidNearest(_CentroidTarget):
    name = "centroid-nearest"

    def plan(self, pool: CleanPool) -> torch.Tensor:
        cos = pool.embeddings @ F.normalize(pool.centroids, dim=1).T
        return cos.scatter(1, pool.clusters[:, None], -torch.inf).argmax(1)


@register_attack
class CentroidRandom(_CentroidTarget):
    name = "centroid-random"

    def plan(self, pool: CleanPool) -> torch.Tensor:
        k = len(pool.centroids)
        shift = torch.from_numpy(np.random.default_rng([pool.seed, 13]).integers(1, max(k, 2), len(pool.clusters)))
        return (pool.clusters + shift) % k


@register_attack
class CentroidBalanced(_CentroidTarget):
    name = "centroid-balanced"

    def plan(self, pool: CleanPool) -> torch.Tensor:
        centroids = F.normalize(pool.centroids, dim=1)
        targets = torch.empty(len(pool.labels), dtype=torch.long)
        for c in torch.unique(pool.labels):
            rows = torch.nonzero(pool.labels == c).squeeze(1)
            targets[rows] = balanced_assignment(pool.embeddings[rows] @ centroids.T)
        return targets


class _FeatureTarget(Attack):
    """Pull the embedding toward ``gallery[context.targets]``: maximise their cosine."""

    needs = ("gallery", "targets")

    def prepare(self, model, x, context):
        return {"target": context.gallery.to(x.device, torch.float32)[context.targets.to(x.device)]}

    def objective(self, embeddings, state):
        return (embeddings * state["target"]).sum(1)


def _class_nearest(pool: CleanPool, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the pool samples ``rows``: per class of the gallery, the best similarity (len(rows), C),
    the gallery position achieving it, and the classes (C,)."""
    sims = pool.embeddings[rows] @ pool.reference.T
    classes = torch.unique(pool.reference_labels)
    column = torch.searchsorted(classes, pool.reference_labels)
    best = torch.full((len(rows), len(classes)), -torch.inf).scatter_reduce(
        1, column.expand(len(rows), -1), sims, reduce="amax")
    hit = sims == best.gather(1, column.expand(len(rows), -1))
    where = torch.zeros_like(best, dtype=torch.long)
    positions = torch.arange(len(pool.reference)).expand(len(rows), -1)
    where.scatter_reduce_(1, column.expand(len(rows), -1), torch.where(hit, positions, torch.zeros_like(positions)),
                          reduce="amax")
    return best, where, classes


@register_attack
class FeatureNearest(_FeatureTarget):
    name = "feature-nearest"
    lowers = ("recall@1",)

    def plan(self, pool: CleanPool) -> torch.Tensor:
        return _per_class(pool, lambda best: best.argmax(1))


@register_attack
class FeatureBalanced(_FeatureTarget):
    name = "feature-balanced"

    def plan(self, pool: CleanPool) -> torch.Tensor:
        return _per_class(pool, balanced_assignment)


def _per_class(pool: CleanPool, choose) -> torch.Tensor:
    """Per class of the pool, ``choose`` (rows' best similarity to each *other* class -> a class per row);
    returns each sample's target gallery position, that class's nearest clean item."""
    targets = torch.empty(len(pool.labels), dtype=torch.long)
    for c in torch.unique(pool.labels):
        rows = torch.nonzero(pool.labels == c).squeeze(1)
        best, where, classes = _class_nearest(pool, rows)
        others = torch.nonzero(classes != c).squeeze(1)
        chosen = others[choose(best[:, others])]
        targets[rows] = where.gather(1, chosen[:, None]).squeeze(1)
    return targets
