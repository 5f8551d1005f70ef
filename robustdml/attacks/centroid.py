"""Centroid margin: the clustering-aware, adaptive attack on k-means inference.

With the centroids C of the clean k-means clustering and each sample's clean assignment a, maximise
``max_{j != a} cos(f(x+δ), c_j) - cos(f(x+δ), c_a)``: the k-means counterpart of the Carlini-Wagner
margin (Carlini & Wagner, arXiv 1608.04644). It reads ``centroids`` (k, D) and ``assignments`` (B,)
from the batch's :class:`~robustdml.attacks.context.AttackContext`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Attack
from .registry import register_attack


def centroid_margin(embeddings: torch.Tensor, centroids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B,) ``cos(e, c_index) - max_{j != index} cos(e, c_j)`` for unit embeddings (B, D) and unit
    centroids (k, D): how far inside cluster ``index`` each embedding lies (negative: outside)."""
    cos = embeddings @ centroids.T
    chosen = cos.gather(1, index[:, None]).squeeze(1)
    others = cos.scatter(1, index[:, None], -torch.inf).amax(1)
    return chosen - others


@register_attack
class CentroidMargin(Attack):
    name = "centroid"
    needs = ("centroids", "assignments")

    def prepare(self, model, x, context):
        return {"centroids": F.normalize(context.centroids.to(x.device, torch.float32), dim=1),
                "assignments": context.assignments.to(x.device)}

    def objective(self, embeddings, state):
        return -centroid_margin(embeddings, state["centroids"], state["assignments"])
