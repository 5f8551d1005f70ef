"""The attack base: an objective maximised in pixel space by one of the optimisers of
:mod:`robustdml.attacks.optim` (PGD, APGD, Square), with the threat model in one place.

An attack is a small object: hyper-parameters go to the constructor, calling it with a model, a
batch and the batch's context returns adversarial images. The caller's tensors are never modified
and the model's train/eval mode is restored afterwards. Any module mapping [0, 1] images to
embeddings works, an ensemble included: gradients flow through everything the module computes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models import EnsembleNet
from ..models.modes import eval_mode
from .context import AttackContext, Norm, check_eps, parse_eps
from .optim import Optimizer, Tracer, gradient_ascent, project, random_search, random_start

__all__ = ["Attack", "CleanPool", "project", "random_start"]


@dataclass
class CleanPool:
    """The whole clean test pool, for attacks that plan per-sample targets globally (:meth:`Attack.plan`).

    ``embeddings`` (N, D) unit vectors; ``labels`` (N,) true classes; ``clusters`` (N,) clean k-means
    assignments; ``centroids`` (k, D); ``reference`` (M, D) / ``reference_labels`` (M,) the clean
    retrieval gallery, ``reference_offset`` the pool position of its first item (0: the pool itself);
    ``self_index`` (N,), where given, each image's own reference position or -1 (default: from the offset).
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    clusters: torch.Tensor
    centroids: torch.Tensor
    reference: torch.Tensor
    reference_labels: torch.Tensor
    reference_offset: int = 0
    seed: int = 0
    self_index: torch.Tensor | None = None

    def own_positions(self) -> torch.Tensor:
        """(N,) each image's own position in the reference set, or -1."""
        if self.self_index is not None:
            return self.self_index
        index = torch.arange(len(self.embeddings)) - self.reference_offset
        return torch.where(index >= 0, index, torch.full_like(index, -1))


class Attack(ABC):
    """Base class. Subclasses set ``name`` and implement :meth:`objective`, the per-sample quantity
    the adversary maximises; options of their own go to their constructor (and are then accepted
    from configs and the CLI through ``attack_kwargs``).

    Args:
        eps: budget (L∞ or L2 radius in [0, 1] pixel units).
        steps: iterations (default 10): gradient steps for ``pgd``/``apgd``, queries for ``square``.
        step_size: ``pgd``: the step (default 2.5 * eps / steps); ``apgd``: the initial step (default 2 * eps).
        norm: ``Norm.LINF`` (default) or ``Norm.L2``.
        random_init: start from a random point of the ball (default True; ``square`` has its own start).
        restarts: independent runs; each sample keeps the run with the highest objective.
        seed: seed of the random starts.
        optimizer: ``"pgd"`` (default), ``"apgd"`` or ``"square"`` (gradient-free).
        reweight_members: on an ``EnsembleNet``, maximise the objective of a member-reweighted
            ensemble embedding (see :class:`MemberReweighted`); ignored for single models.

    Example:
        >>> attack = EmbeddingDisplacement(eps=8 / 255, steps=10)
        >>> x_adv = attack(model, images)
    """

    name: ClassVar[str]
    white_box: ClassVar[bool] = True
    #: the metrics the attack is built to lower (the "beats noise" check compares these).
    lowers: ClassVar[tuple[str, ...]] = ("nmi",)
    #: the :class:`AttackContext` fields the attack reads.
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, eps: float, steps: int = 10, step_size: float | None = None, norm: Norm | str = Norm.LINF,
                 random_init: bool = True, restarts: int = 1, seed: int = 0, optimizer: Optimizer | str = Optimizer.PGD,
                 reweight_members: bool = False):
        if int(steps) != steps or steps < 1:
            raise ConfigError(f"steps must be a whole number >= 1, got {steps}")
        if int(restarts) != restarts or restarts < 1:
            raise ConfigError(f"restarts must be a whole number >= 1, got {restarts}")
        step_size = None if step_size is None else parse_eps(step_size, "step_size")
        if step_size is not None and not step_size > 0:
            raise ConfigError(f"step_size must be positive, got {step_size}")
        try:
            self.norm = Norm(norm)
        except ValueError:
            raise ConfigError(f"norm must be one of {', '.join(n.value for n in Norm)}, not {norm!r}") from None
        eps = check_eps(parse_eps(eps), self.norm)
        try:
            self.optimizer = Optimizer(optimizer)
        except ValueError:
            raise ConfigError(f"optimizer must be one of {', '.join(o.value for o in Optimizer)}, not {optimizer!r}") from None
        self.eps, self.steps, self.restarts, self.seed = float(eps), int(steps), int(restarts), seed
        default_step = 2 * self.eps if self.optimizer is Optimizer.APGD else 2.5 * self.eps / self.steps
        self.step_size = float(step_size) if step_size is not None else default_step
        self.random_init = random_init
        self.reweight_members = bool(reweight_members)
        self.trace: Tracer | None = None  # set by an evaluation that records convergence curves

    @property
    def uses_gradients(self) -> bool:
        """Whether this instance reads the target's gradients (white-box and not a random search)."""
        return self.white_box and self.optimizer is not Optimizer.SQUARE

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:.6g}, steps={self.steps}, step_size={self.step_size:.6g}, "
                f"norm={self.norm.value}, restarts={self.restarts}, optimizer={self.optimizer.value})")

    @abstractmethod
    def objective(self, embeddings: torch.Tensor, state: dict) -> torch.Tensor:
        """Per-sample objective (B,) of the adversarial embeddings (B, D); higher is worse for the
        defender. ``state`` is what :meth:`prepare` returned for this batch."""

    def plan(self, pool: CleanPool) -> torch.Tensor | None:
        """Per-sample targets (N,) chosen once with the whole clean pool in view (e.g. a balanced
        spread of each class over the clusters); the evaluation hands each batch its slice as
        ``context.targets``. ``None``: the attack plans nothing."""
        return None

    def prepare(self, model: nn.Module, x: torch.Tensor, context: AttackContext) -> dict:
        """Per-batch set-up before the PGD loop (e.g. the clean embeddings, tensors moved to the
        device), from the batch's context. Runs without gradients."""
        return {}

    def __call__(self, model: nn.Module, images: torch.Tensor, context: AttackContext | None = None) -> torch.Tensor:
        context = context if context is not None else AttackContext()
        context.require(self.needs, self.name)
        x = images.detach().clone()
        with eval_mode(model, context.surrogate):
            with torch.no_grad():
                state = self.prepare(model, x, context)
            return self.perturb(model, x, state, context).detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, state: dict, context: AttackContext) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        if self.reweight_members and isinstance(model, EnsembleNet):
            model = MemberReweighted(model, x)
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        best_x, best_obj = None, None
        for restart in range(self.restarts):
            x_adv = self._optimize(model, x, state, generator, context.start if restart == 0 else None)
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

    def _optimize(self, model: nn.Module, x: torch.Tensor, state: dict, generator: torch.Generator,
                  start: torch.Tensor | None = None) -> torch.Tensor:
        def objective(x_adv):
            return self.objective(model(x_adv), state)

        if self.optimizer is Optimizer.SQUARE:
            delta = random_search(objective, x, self.eps, self.norm, self.steps, generator, trace=self.trace)
        else:
            if start is not None:
                start = project(x, start.to(x), self.eps, self.norm)
            elif self.random_init:
                start = random_start(x, self.eps, self.norm, generator)
            else:
                start = torch.zeros_like(x)
            delta = gradient_ascent(objective, x, start, self.eps, self.norm, self.steps, self.step_size,
                                    adaptive=self.optimizer is Optimizer.APGD, trace=self.trace)
        return (x + delta).detach()


class MemberReweighted(nn.Module):
    """An ensemble embedding whose members are weighted per sample toward the members the attack has
    moved least so far: ``normalize(sum_m w_m f_m(x))`` with ``w = N · softmax(-d / TEMPERATURE)``
    over members, ``d_m = 1 - cos(f_m(x'), f_m(x))`` each member's displacement from its clean
    embedding, recomputed (without gradient) at every evaluation. After the member-reweighting idea
    of MORA (Zhang et al., arXiv 2211.08008): an ensemble attack whose gradient one easy member
    dominates leaves the others intact; reweighting spends the budget where the ensemble resists.
    For ``concat`` ensembles the weights scale each member's block."""

    TEMPERATURE = 0.1

    def __init__(self, ensemble: EnsembleNet, clean_images: torch.Tensor):
        super().__init__()
        self.ensemble = ensemble
        with torch.no_grad():
            self.clean = [m(clean_images) for m in ensemble.members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.ensemble.members]
        with torch.no_grad():
            moved = torch.stack([1 - (o * c).sum(1) for o, c in zip(outs, self.clean)], 1)  # (B, N)
            weights = len(outs) * torch.softmax(-moved / self.TEMPERATURE, dim=1)
        weighted = [o * weights[:, i:i + 1] for i, o in enumerate(outs)]
        joined = torch.stack(weighted).mean(0) if self.ensemble.combine == "mean" else torch.cat(weighted, 1)
        return F.normalize(joined, dim=1)
