"""The training-method interface: given the model, the loss and a batch, return the loss to minimise.

A method is a small object with explicit hooks for what some methods need beyond the loss: the
model and loss modules it trains (an ensemble, say), its own trainable parameters, per-epoch
schedules and state that must survive ``--resume``. Adding a method is one file with a class
decorated by ``@register_method``, imported in ``methods/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from ..attacks import ThreatModel
from ..registry import Registry


@dataclass(frozen=True)
class TrainingSetup:
    """What the training run tells a method once, before the first batch."""

    num_samples: int       # training-set size (indices in a batch are positions in it)
    seed: int
    threat: ThreatModel    # the dataset's threat model: the default budget of a training adversary


class TrainingMethod(ABC):
    """A way of turning a batch into a training loss (standard, adversarial, mixup, ensemble...).

    ``index`` holds the batch's positions in the training set, for methods that give different
    samples to different ensemble members.
    """

    name: ClassVar[str]

    #: whether the training step may replay this method's model passes from CUDA graphs
    #: (:mod:`robustdml.models.graphed`); False for a method that takes second derivatives or reuses
    #: the update's input gradient
    graphable: bool = True

    def build_model(self, make_model: Callable[[], nn.Module]) -> nn.Module:
        """The model this method trains, from a factory of single embedding networks."""
        return make_model()

    def build_criterion(self, make_criterion: Callable[[], nn.Module]) -> nn.Module:
        """The loss module(s) this method trains with."""
        return make_criterion()

    def setup(self, run: TrainingSetup) -> None:
        """Called once before the first batch (and again on ``--resume``, before state is restored)."""

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups for the method's own trainable parameters (beyond the model's and the loss's)."""
        return []

    def after_backward(self) -> None:
        """Called after each update's backward pass, before the optimiser step (gradients in place)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (0-based), e.g. for a schedule of the method's own."""

    def state_dict(self) -> dict:
        """State saved in every checkpoint and given back on ``--resume`` (tensors and plain data only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    @abstractmethod
    def loss(self, model: nn.Module, criterion: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             index: torch.Tensor) -> torch.Tensor:
        ...


METHODS: Registry = Registry("method")
register_method = METHODS.register


def create_method(name: str, **options) -> TrainingMethod:
    """The method ``name``; ``options`` are checked against its constructor."""
    return METHODS.create(name, **options)
