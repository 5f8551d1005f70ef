"""Losses: thin adapters over pytorch-metric-learning. Proxy Anchor (Kim et al., "Proxy Anchor Loss
for Deep Metric Learning", arXiv 2003.13911) is the default; any pytorch-metric-learning loss is
selectable by name ("proxy_anchor", "ProxyAnchorLoss", "multi_similarity", "triplet_margin", ...).
``ptriplet`` is RobRank's triplet recipe on pair batches (:class:`PairTripletLoss`).

>>> loss = create_loss("proxy_anchor", num_classes=100, embedding_dim=512, margin=0.1, alpha=32)
>>> loss(embeddings, labels)
"""

from __future__ import annotations

import inspect

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.reducers import MeanReducer
from torch import nn

from ..errors import ConfigError


def _key(name: str) -> str:
    key = name.lower().replace("_", "").replace("-", "")
    return key[: -len("loss")] if key.endswith("loss") else key


def mine_triplets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchors, positives, negatives) positions in a batch. On a pair batch (anchor, positive,
    anchor, positive, ...) RobRank's ``spc2-random`` triplets: each even position an anchor, the
    next image its positive. On any other batch (ours) every image with a same-class partner is an
    anchor with a random positive of its class. Either way each anchor's negative is one uniformly
    random image of another class (anchors without one are dropped). Random choices come from the
    global generator, so a resumed run repeats them."""
    n = len(labels)
    if n % 2 == 0 and n > 0 and torch.equal(labels[0::2], labels[1::2]):
        anchors = torch.arange(0, n, 2, device=labels.device)
        positives = anchors + 1
    else:
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        anchors = same.any(1).nonzero().squeeze(1)
        positives = (torch.multinomial(same[anchors].float(), 1).squeeze(1) if len(anchors)
                     else anchors.clone())
    other = labels[anchors, None] != labels[None, :]
    keep = other.any(1)
    anchors, positives, other = anchors[keep], positives[keep], other[keep]
    negatives = torch.multinomial(other.float(), 1).squeeze(1) if len(anchors) else anchors.clone()
    return anchors, positives, negatives


class PairTripletLoss(nn.Module):
    """The triplet loss of RobRank's ``ptripletN`` on SPC-2 pair batches (``sampler: pairs``): its
    triplets (:func:`mine_triplets`), Euclidean distance of L2-normalised embeddings, margin 0.2, the
    mean over all triplets (zero-loss ones included). pytorch-metric-learning's ``TripletMarginLoss``
    computes it from these triplets."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin
        self.loss = pml_losses.TripletMarginLoss(margin=margin, distance=LpDistance(normalize_embeddings=True, p=2),
                                                 reducer=MeanReducer())

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if len(labels) % 2 or not torch.equal(labels[0::2], labels[1::2]):
            raise ConfigError("the ptriplet loss needs pair batches (anchor, positive, ...): set sampler: pairs")
        triplets = mine_triplets(labels)
        if len(triplets[0]) == 0:
            return embeddings.sum() * 0
        return self.loss(embeddings, labels, indices_tuple=triplets)


LOSSES: dict[str, type] = {
    _key(name): cls for name, cls in vars(pml_losses).items()
    if inspect.isclass(cls) and issubclass(cls, nn.Module) and name.endswith("Loss")
    and name not in ("BaseMetricLossFunction", "GenericPairLoss", "MultipleLosses", "SelfSupervisedLoss", "CrossBatchMemory")
}
LOSSES["ptriplet"] = PairTripletLoss


def create_loss(name: str, num_classes: int, embedding_dim: int, **kwargs) -> nn.Module:
    """A pytorch-metric-learning loss by name. ``num_classes`` and ``embedding_dim`` are passed to
    losses with learnable class weights (proxies); ``kwargs`` go to its constructor."""
    cls = LOSSES.get(_key(name))
    if cls is None:
        raise ConfigError(f"unknown loss '{name}'; choose a pytorch-metric-learning loss, e.g. proxy_anchor, "
                          f"proxy_nca, multi_similarity, triplet_margin, contrastive, arcface")
    params = inspect.signature(cls.__init__).parameters
    if "num_classes" in params:
        kwargs["num_classes"] = num_classes
    if "embedding_size" in params:
        kwargs["embedding_size"] = embedding_dim
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad arguments for loss '{name}': {e}") from None


__all__ = ["LOSSES", "PairTripletLoss", "create_loss", "mine_triplets"]
