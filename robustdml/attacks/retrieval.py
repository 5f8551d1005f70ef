"""Retrieval attack: move a query's embedding away from its own class in the clean gallery and
toward its nearest other-class item, maximising
``max_{j: y_j != y} cos(f(x+δ), g_j) - max_{j: y_j = y, j != self} cos(f(x+δ), g_j)``,
the margin that decides Recall@1. It reads ``gallery`` (N, D), ``gallery_labels`` (N,), ``labels`` (B,)
and ``self_index`` (B,: the query's own gallery position, or -1) from the batch's context.
"""

from __future__ import annotations

import torch

from .base import Attack
from .registry import register_attack


@register_attack
class RetrievalAttack(Attack):
    name = "retrieval"
    lowers = ("recall@1",)
    needs = ("gallery", "gallery_labels", "labels", "self_index")

    def prepare(self, model, x, context):
        dev = x.device
        gallery_labels, labels = context.gallery_labels.to(dev), context.labels.to(dev)
        same = labels[:, None] == gallery_labels[None, :]
        own = torch.zeros_like(same)
        self_index = context.self_index.to(dev)
        rows = torch.nonzero(self_index >= 0).squeeze(1)
        own[rows, self_index[rows]] = True
        return {"gallery": context.gallery.to(dev, torch.float32), "positive": same & ~own, "negative": ~same}

    def objective(self, embeddings, state):
        sims = embeddings @ state["gallery"].T
        nearest_negative = sims.masked_fill(~state["negative"], -torch.inf).amax(1)
        nearest_positive = sims.masked_fill(~state["positive"], -torch.inf).amax(1)
        # a query with no positive (or no negative) left contributes no gradient
        margin = nearest_negative - nearest_positive
        return torch.where(torch.isfinite(margin), margin, torch.zeros_like(margin))
