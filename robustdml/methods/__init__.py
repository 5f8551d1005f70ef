"""Training methods, each a small object returning the loss of a batch (docs/design.md, "Training
methods"): ``standard``, ``pgd-at``, ``trades``, ``mixup``, ``eat``, and RobRank's ``est``, ``act``, ``hm``."""

from . import standard, adversarial, mixup, eat, est, act, hm  # noqa: F401,I001  (registers, in the order tables show them)
from .base import METHODS, TrainingMethod, TrainingSetup, create_method, register_method

__all__ = ["METHODS", "TrainingMethod", "TrainingSetup", "create_method", "register_method"]
