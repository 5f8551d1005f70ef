"""Retrieval attack: move a query's embedding away from its own class in the clean gallery and
toward the other classes. It reads ``gallery`` (N, D), ``gallery_labels`` (N,), ``labels`` (B,) and
``self_index`` (B,: the query's own gallery position, or -1) from the batch's context.

Two objectives, like the margin and cross-entropy losses of attacks on classifiers:

- ``loss="margin"`` (default): ``max_{j: y_j != y} cos(f(x+δ), g_j) - max_{j: y_j = y, j != self} cos(f(x+δ), g_j)``,
  the margin that decides Recall@1; its gradient reaches only the nearest positive and negative.
- ``loss="softmax"``: ``-log p(same class)`` with ``p`` the softmax of ``cos / TEMPERATURE`` over the
  gallery (self excluded): the listwise cross-entropy of NCA, whose gradient pushes every close
  positive away at once, so the nearest positive does not simply hand over to the next.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Attack
from .registry import register_attack

LOSSES = ("margin", "softmax")


@register_attack
class RetrievalAttack(Attack):
    name = "retrieval"
    lowers = ("recall@1",)
    needs = ("gallery", "gallery_labels", "labels", "self_index")
    #: the softmax temperature of ``loss="softmax"`` (cosines of unit embeddings lie in [-1, 1]).
    TEMPERATURE = 0.01

    def __init__(self, *args, loss: str = "margin", **kwargs):
        super().__init__(*args, **kwargs)
        if loss not in LOSSES:
            raise ConfigError(f"retrieval loss must be one of {', '.join(LOSSES)}, not {loss!r}")
        self.loss = loss

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
        if self.loss == "softmax":
            logits = sims / self.TEMPERATURE
            everything = logits.masked_fill(~(state["positive"] | state["negative"]), -torch.inf).logsumexp(1)
            positives = logits.masked_fill(~state["positive"], -torch.inf).logsumexp(1)
            value = everything - positives
        else:
            nearest_negative = sims.masked_fill(~state["negative"], -torch.inf).amax(1)
            nearest_positive = sims.masked_fill(~state["positive"], -torch.inf).amax(1)
            value = nearest_negative - nearest_positive
        # a query with no positive (or no negative) left contributes no gradient
        return torch.where(torch.isfinite(value), value, torch.zeros_like(value))
