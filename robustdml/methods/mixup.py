"""Input Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", arXiv 1710.09412) for
metric learning: each mixed sample counts as a positive of both source classes, its loss weighted
λ and 1 - λ."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import TrainingMethod, register_method


@register_method
class Mixup(TrainingMethod):
    """``λ · L(f(x̃), y) + (1 - λ) · L(f(x̃), y[perm])`` with ``x̃ = λ x + (1 - λ) x[perm]``.

    Args:
        alpha: λ ~ Beta(alpha, alpha) per batch (default 0.4).
        lam: a fixed λ instead (λ = 1 is standard training).
    """

    name = "mixup"

    def __init__(self, alpha: float = 0.4, lam: float | None = None):
        if alpha <= 0:
            raise ConfigError(f"alpha must be positive, got {alpha}")
        if lam is not None and not 0 <= lam <= 1:
            raise ConfigError(f"lam must be in [0, 1], got {lam}")
        self.alpha, self.lam = alpha, lam

    def loss(self, model, criterion, images, labels, index):
        lam = self.lam if self.lam is not None else float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        if lam == 1:
            return criterion(model(images), labels)
        perm = torch.randperm(len(images), device=images.device)
        embeddings = model(lam * images + (1 - lam) * images[perm])
        return lam * criterion(embeddings, labels) + (1 - lam) * criterion(embeddings, labels[perm])
