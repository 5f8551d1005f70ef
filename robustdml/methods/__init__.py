"""Training methods, each a small object returning the loss of a batch (see DESIGN §4):
``standard``, ``pgd-at``, ``trades``, ``mixup``, ``eat``."""

from . import adversarial, eat, mixup, standard  # noqa: F401  (registers)
from .base import METHODS, TrainingMethod, create_method, register_method

__all__ = ["METHODS", "TrainingMethod", "create_method", "register_method"]
