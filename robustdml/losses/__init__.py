"""Losses: thin adapters over pytorch-metric-learning. Proxy Anchor (Kim et al., "Proxy Anchor Loss
for Deep Metric Learning", arXiv 2003.13911) is the default; any pytorch-metric-learning loss is
selectable by name ("proxy_anchor", "ProxyAnchorLoss", "multi_similarity", "triplet_margin", ...).

>>> loss = create_loss("proxy_anchor", num_classes=100, embedding_dim=512, margin=0.1, alpha=32)
>>> loss(embeddings, labels)
"""

from __future__ import annotations

import inspect

from pytorch_metric_learning import losses as pml_losses
from torch import nn

from ..errors import ConfigError


def _key(name: str) -> str:
    key = name.lower().replace("_", "").replace("-", "")
    return key[: -len("loss")] if key.endswith("loss") else key


LOSSES: dict[str, type] = {
    _key(name): cls for name, cls in vars(pml_losses).items()
    if inspect.isclass(cls) and issubclass(cls, nn.Module) and name.endswith("Loss")
    and name not in ("BaseMetricLossFunction", "GenericPairLoss", "MultipleLosses", "SelfSupervisedLoss", "CrossBatchMemory")
}


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


__all__ = ["LOSSES", "create_loss"]
