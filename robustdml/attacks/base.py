"""The attack base: projected gradient ascent (PGD) in pixel space, with the threat model in one place.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", arXiv 1706.06083.
An attack is a small object: hyper-parameters go to the constructor, calling it with a model and a
batch returns adversarial images. The caller's tensors are never modified and the model's train/eval
mode is restored afterwards. Any module mapping [0, 1] images to embeddings works, an ensemble
included: gradients flow through everything the module computes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from .context import AttackContext, Norm


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project ``delta`` onto the eps-ball of ``norm`` and keep ``x + delta`` inside [0, 1]."""
    if norm is Norm.LINF:
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0, 1) - x


def random_start(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random point of the eps-ball (uniform in the L∞ cube; uniform direction and radius for L2)."""
    if norm is Norm.LINF:
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=generator, device=x.device)
        direction = direction / _per_sample_norm(direction).clamp_min(1e-12)
        radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device)
        delta = direction * radius * eps
    return project(x, delta, eps, norm)


class Attack(ABC):
    """Base class. Subclasses set ``name`` and implement :meth:`objective`, the per-sample quantity
    the adversary maximises; options of their own go to their constructor (and are then accepted
    from configs and the CLI through ``attack_kwargs``).

    Args:
        eps: budget (L∞ or L2 radius in [0, 1] pixel units).
        steps: PGD steps (default 10).
        step_size: per-step size; default 2.5 * eps / steps.
        norm: ``Norm.LINF`` (default) or ``Norm.L2``.
        random_init: start from a random point of the ball (default True).
        restarts: independent runs; each sample keeps the run with the highest objective.
        seed: seed of the random starts.

    Example:
        >>> attack = EmbeddingDisplacement(eps=8 / 255, steps=10)
        >>> x_adv = attack(model, images)
    """

    name: ClassVar[str]
    white_box: ClassVar[bool] = True
    #: the metrics the attack is built to lower (the "beats noise" check compares these).
    targets: ClassVar[tuple[str, ...]] = ("nmi",)
    #: the :class:`AttackContext` fields the attack reads.
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, eps: float, steps: int = 10, step_size: float | None = None, norm: Norm | str = Norm.LINF,
                 random_init: bool = True, restarts: int = 1, seed: int = 0):
        if not eps >= 0:
            raise ConfigError(f"eps must be >= 0, got {eps}")
        if int(steps) != steps or steps < 1:
            raise ConfigError(f"steps must be a whole number >= 1, got {steps}")
        if int(restarts) != restarts or restarts < 1:
            raise ConfigError(f"restarts must be a whole number >= 1, got {restarts}")
        if step_size is not None and not step_size > 0:
            raise ConfigError(f"step_size must be positive, got {step_size}")
        try:
            self.norm = Norm(norm)
        except ValueError:
            raise ConfigError(f"norm must be one of {', '.join(n.value for n in Norm)}, not {norm!r}") from None
        self.eps, self.steps, self.restarts, self.seed = float(eps), int(steps), int(restarts), seed
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / self.steps
        self.random_init = random_init

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:.6g}, steps={self.steps}, step_size={self.step_size:.6g}, "
                f"norm={self.norm.value}, restarts={self.restarts})")

    @abstractmethod
    def objective(self, embeddings: torch.Tensor, state: dict) -> torch.Tensor:
        """Per-sample objective (B,) of the adversarial embeddings (B, D); higher is worse for the
        defender. ``state`` is what :meth:`prepare` returned for this batch."""

    def prepare(self, model: nn.Module, x: torch.Tensor, context: AttackContext) -> dict:
        """Per-batch set-up before the PGD loop (e.g. the clean embeddings, tensors moved to the
        device), from the batch's context. Runs without gradients."""
        return {}

    def __call__(self, model: nn.Module, images: torch.Tensor, context: AttackContext | None = None) -> torch.Tensor:
        context = context if context is not None else AttackContext()
        context.require(self.needs, self.name)
        x = images.detach().clone()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                state = self.prepare(model, x, context)
            return self.perturb(model, x, state, context).detach()
        finally:
            model.train(was_training)

    def perturb(self, model: nn.Module, x: torch.Tensor, state: dict, context: AttackContext) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        best_x, best_obj = None, None
        for _ in range(self.restarts):
            x_adv = self._pgd(model, x, state, generator)
            if self.restarts == 1:
                return x_adv
            with torch.no_grad():
                obj = self.objective(model(x_adv), state)
            if best_x is None:
                best_x, best_obj = x_adv, obj
            else:
                better = obj > best_obj
                best_x = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best_x)
                best_obj = torch.maximum(obj, best_obj)
        return best_x

    def _pgd(self, model: nn.Module, x: torch.Tensor, state: dict, generator: torch.Generator) -> torch.Tensor:
        delta = random_start(x, self.eps, self.norm, generator) if self.random_init else torch.zeros_like(x)
        for _ in range(self.steps):
            delta.requires_grad_(True)
            loss = self.objective(model(x + delta), state).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                if self.norm is Norm.LINF:
                    step = grad.sign()
                else:
                    step = grad / _per_sample_norm(grad).clamp_min(1e-12)
                delta = project(x, delta + self.step_size * step, self.eps, self.norm)
        return (x + delta).detach()
