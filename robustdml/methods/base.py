"""The training-method interface: given the model, the loss and a batch, return the loss to minimise."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch
from torch import nn

from ..errors import ConfigError


class TrainingMethod(ABC):
    """A way of turning a batch into a training loss (standard, adversarial, mixup, ensemble...).

    ``index`` holds the batch's positions in the training set, for methods that give different
    samples to different ensemble members.
    """

    name: ClassVar[str]

    def build_model(self, make_model: Callable[[], nn.Module]) -> nn.Module:
        """The model this method trains, from a factory of single embedding networks."""
        return make_model()

    def build_criterion(self, make_criterion: Callable[[], nn.Module]) -> nn.Module:
        """The loss module(s) this method trains with."""
        return make_criterion()

    def setup(self, num_samples: int, seed: int) -> None:
        """Called once with the training-set size, before the first batch."""

    @abstractmethod
    def loss(self, model: nn.Module, criterion: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             index: torch.Tensor) -> torch.Tensor:
        ...


METHODS: dict[str, type[TrainingMethod]] = {}


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    METHODS[cls.name] = cls
    return cls


def create_method(name: str, **kwargs) -> TrainingMethod:
    cls = METHODS.get(name)
    if cls is None:
        raise ConfigError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ConfigError(f"method '{name}' takes no option(s) {', '.join(sorted(unknown))}"
                          + (f"; it takes {', '.join(sorted(allowed))}" if allowed else ""))
    return cls(**kwargs)
