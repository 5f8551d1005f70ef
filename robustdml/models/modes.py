"""The one train/eval mode switch of the evaluation code.

Evaluation must never change the model it evaluates: a BatchNorm layer left in train mode updates its
running statistics from every batch it sees, so embedding adversarial *test* images in train mode
writes test statistics into the model (and computes the metrics with batch statistics). Every
evaluation entry point and every attack runs its model inside :func:`eval_mode`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Put ``models`` (``None`` entries are skipped) in eval mode for the block, then give each of
    their submodules back the exact mode it had: a model whose parts were in mixed modes (frozen
    BatchNorm inside a training backbone, say) gets the same mix back, which restoring the top-level
    flag alone would not give.

    Example:
        >>> with eval_mode(model):
        ...     emb = model(images)
    """
    saved = [(m, m.training) for model in models if model is not None for m in model.modules()]
    for model in models:
        if model is not None:
            model.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training
