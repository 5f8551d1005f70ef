"""Defences adapted from classification: PGD adversarial training and TRADES.

- ``pgd-at``: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
  arXiv 1706.06083 — train on PGD examples only.
- ``trades``: Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
  arXiv 1901.08573 — clean loss + β · divergence(clean, adversarial), the adversary maximising the
  divergence. For embeddings the divergence is the cosine distance 1 - cos(f(x'), f(x)) (ours).
"""

from __future__ import annotations

import torch

from ..attacks import AttackContext, EmbeddingDisplacement, LossAttack, Norm, ThreatModel, check_eps, parse_eps
from ..errors import ConfigError
from .base import TrainingMethod, TrainingSetup, register_method

OBJECTIVES = ("displacement", "loss")


class TrainingAttack:
    """The attack used inside training: eps and norm (default: the dataset's threat model, given by
    :meth:`bind`), steps, step size (default eps/4: 2/255 for 8/255, and 2.5·eps/steps at 10 steps),
    objective (embedding displacement or the training loss)."""

    def __init__(self, eps: float | None = None, steps: int = 10, step_size: float | None = None,
                 objective: str = "displacement", norm: str | None = None):
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, not '{objective}'")
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be a whole number >= 1, got {steps!r}")
        if norm is not None and norm not in {n.value for n in Norm}:
            raise ConfigError(f"norm must be one of {', '.join(n.value for n in Norm)}, not {norm!r}")
        eps = None if eps is None else check_eps(parse_eps(eps), norm or Norm.LINF)
        step_size = None if step_size is None else parse_eps(step_size, "step_size")
        self.objective, self.eps, self.steps, self.step_size, self.norm = objective, eps, steps, step_size, norm
        self.attack, self.bound_eps = None, None
        if eps is not None:
            self.bind(ThreatModel(eps, Norm(norm or Norm.LINF)))

    def bind(self, threat: ThreatModel) -> None:
        """Fill the budget the method's options leave open from the dataset's threat model."""
        eps = self.eps if self.eps is not None else threat.eps
        norm = self.norm or threat.norm
        cls = EmbeddingDisplacement if self.objective == "displacement" else LossAttack
        step = self.step_size if self.step_size is not None else max(eps, 1e-12) / 4
        self.attack = cls(eps, steps=self.steps, step_size=step, norm=norm) if eps > 0 else None
        self.bound_eps = eps

    def __call__(self, model, criterion, images, labels):
        if self.attack is None:
            if self.bound_eps is None:
                raise RuntimeError("the training attack has no eps: pass eps or call the method's setup() first")
            return images
        # a fresh random start per batch, drawn from the global generator so that a resumed run
        # (whose RNG state is checkpointed) repeats it exactly
        self.attack.seed = int(torch.randint(2**31 - 1, (1,)))
        return self.attack(model, images, AttackContext(criterion=criterion, labels=labels))


class AdversarialMethod(TrainingMethod):
    """A method with a training adversary in ``self.adversary``, bound to the dataset's threat model."""

    adversary: TrainingAttack

    def setup(self, run: TrainingSetup) -> None:
        if self.adversary.eps is None:  # an eps in the method's options wins over the dataset's
            self.adversary.bind(run.threat)


@register_method
class PGDAT(AdversarialMethod):
    """Train on PGD adversarial examples: ``criterion(model(x_adv), y)``. eps = 0 is standard training."""

    name = "pgd-at"

    def __init__(self, eps: float | None = None, steps: int = 10, step_size: float | None = None,
                 objective: str = "displacement", norm: str | None = None):
        self.adversary = TrainingAttack(eps, steps, step_size, objective, norm)

    def loss(self, model, criterion, images, labels, index):
        return criterion(model(self.adversary(model, criterion, images, labels)), labels)


@register_method
class TRADES(AdversarialMethod):
    """``criterion(f(x), y) + beta * mean(1 - cos(f(x_adv), f(x)))``; beta = 0 is standard training."""

    name = "trades"

    def __init__(self, beta: float = 6.0, eps: float | None = None, steps: int = 10, step_size: float | None = None,
                 norm: str | None = None):
        if beta < 0:
            raise ConfigError(f"beta must be >= 0, got {beta}")
        self.beta = beta
        self.adversary = TrainingAttack(eps, steps, step_size, "displacement", norm)

    def loss(self, model, criterion, images, labels, index):
        clean = model(images)
        loss = criterion(clean, labels)
        if self.beta == 0:
            return loss
        adversarial = model(self.adversary(model, criterion, images, labels))
        return loss + self.beta * (1 - (adversarial * clean).sum(1)).mean()
