"""Defences adapted from classification: PGD adversarial training and TRADES.

- ``pgd-at``: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
  arXiv 1706.06083 — train on PGD examples only.
- ``trades``: Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
  arXiv 1901.08573 — clean loss + β · divergence(clean, adversarial), the adversary maximising the
  divergence. For embeddings the divergence is the cosine distance 1 - cos(f(x'), f(x)) (ours).
"""

from __future__ import annotations

import torch

from ..attacks import EmbeddingDisplacement, LossAttack
from ..errors import ConfigError
from .base import TrainingMethod, register_method

OBJECTIVES = ("displacement", "loss")


class _TrainingAttack:
    """The attack used inside training: eps, steps, step size (default eps/4: 2/255 for 8/255, and
    2.5·eps/steps at 10 steps), objective (embedding displacement or the training loss)."""

    def __init__(self, eps: float, steps: int = 10, step_size: float | None = None, objective: str = "displacement",
                 norm: str = "linf", seed: int = 0):
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, not '{objective}'")
        if not isinstance(eps, (int, float)) or not eps >= 0:
            raise ConfigError(f"eps must be a number >= 0, got {eps!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be a whole number >= 1, got {steps!r}")
        cls = EmbeddingDisplacement if objective == "displacement" else LossAttack
        self.objective = objective
        self.eps = eps
        self.attack = cls(eps, steps=steps, step_size=step_size if step_size is not None else max(eps, 1e-12) / 4,
                          norm=norm) if eps > 0 else None

    def __call__(self, model, criterion, images, labels):
        if self.attack is None:
            return images
        # a fresh random start per batch, drawn from the global generator so that a resumed run
        # (whose RNG state is checkpointed) repeats it exactly
        self.attack.seed = int(torch.randint(2**31 - 1, (1,)))
        context = {"criterion": criterion, "labels": labels}
        return self.attack(model, images, **{k: context[k] for k in self.attack.needs})


@register_method
class PGDAT(TrainingMethod):
    """Train on PGD adversarial examples: ``criterion(model(x_adv), y)``. eps = 0 is standard training."""

    name = "pgd-at"

    def __init__(self, eps: float = 8 / 255, steps: int = 10, step_size: float | None = None,
                 objective: str = "displacement", norm: str = "linf"):
        self.adversary = _TrainingAttack(eps, steps, step_size, objective, norm)

    def loss(self, model, criterion, images, labels, index):
        return criterion(model(self.adversary(model, criterion, images, labels)), labels)


@register_method
class TRADES(TrainingMethod):
    """``criterion(f(x), y) + beta * mean(1 - cos(f(x_adv), f(x)))``; beta = 0 is standard training."""

    name = "trades"

    def __init__(self, beta: float = 6.0, eps: float = 8 / 255, steps: int = 10, step_size: float | None = None,
                 norm: str = "linf"):
        if beta < 0:
            raise ConfigError(f"beta must be >= 0, got {beta}")
        self.beta = beta
        self.adversary = _TrainingAttack(eps, steps, step_size, "displacement", norm)

    def loss(self, model, criterion, images, labels, index):
        clean = model(images)
        loss = criterion(clean, labels)
        if self.beta == 0:
            return loss
        adversarial = model(self.adversary(model, criterion, images, labels))
        return loss + self.beta * (1 - (adversarial * clean).sum(1)).mean()
