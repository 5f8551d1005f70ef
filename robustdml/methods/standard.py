"""Plain deep metric learning: the loss of the clean batch."""

from __future__ import annotations

from .base import TrainingMethod, register_method


@register_method
class Standard(TrainingMethod):
    """``criterion(model(x), y)``, no adversary."""

    name = "standard"

    def loss(self, model, criterion, images, labels, index):
        return criterion(model(images), labels)
