"""Checks on a model before a long evaluation, as AutoAttack checks a classifier before it attacks:
does it embed the data's images at all, into (B, D) float embeddings of unit norm, the same way twice,
with gradients reaching the input? A model that cannot be evaluated is a one-line error; one whose
figures would be doubtful gets a :class:`~robustdml.errors.RobustDMLWarning` that says what to do.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, RobustDMLWarning
from ..models.modes import eval_mode

NORM_TOLERANCE = 1e-3   # |‖z‖ - 1| allowed for "unit norm"
AGREE_TOLERANCE = 1e-5  # two eval-mode forwards of a deterministic model agree to this


class Normalized(nn.Module):
    """``model`` with its embeddings L2-normalised (what ``normalize=True`` evaluates)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(images), dim=-1)


def check_images(images: torch.Tensor, what: str = "images") -> None:
    """A one-line error unless ``images`` is a float batch (N, C, H, W) in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"{what} must be a float tensor (N, C, H, W), got {shape}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise ConfigError(f"{what} must be in [0, 1] (the attacks' budgets are in those units), found values in "
                          f"[{low:.3g}, {high:.3g}]: divide 8-bit images by 255 and leave normalisation to the model")


def preflight(model, example: torch.Tensor, *, normalize: bool = False) -> nn.Module:
    """The model to evaluate (``model``, or it with normalised outputs if ``normalize``), after the
    checks on ``example``, a few of the data's images on the model's device."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"the model must be a torch.nn.Module mapping images to embeddings, not {type(model).__name__}")
    shape = "x".join(map(str, example.shape[1:]))
    with eval_mode(model):
        try:
            with torch.no_grad():
                first, second = model(example), model(example)
        except Exception as e:
            raise ConfigError(f"the model cannot embed the data's images (batches of {shape} in [0, 1]): "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        if not isinstance(first, torch.Tensor) or first.dim() != 2 or len(first) != len(example):
            got = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
            raise ConfigError(f"the model must return (B, D) embeddings; for {len(example)} images of {shape} it "
                              f"returned {got}")
        if not first.is_floating_point() or not torch.isfinite(first).all():
            raise ConfigError("the model's embeddings must be finite floats, got "
                              + (str(first.dtype) if not first.is_floating_point() else "NaN or inf values"))
        norms = first.float().norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=NORM_TOLERANCE):
            if not normalize:
                warnings.warn(f"the model's embeddings are not unit norm (norms {norms.min():.3g} to {norms.max():.3g}): "
                              "the metrics and attacks assume unit-norm embeddings; pass normalize=True (CLI: "
                              "--normalize) to L2-normalise them", RobustDMLWarning, stacklevel=3)
        gap = float((first - second).abs().max())
        if gap > AGREE_TOLERANCE:
            warnings.warn(f"two forwards of the same images in eval mode differ by {gap:.3g}: the model is random at "
                          "test time, so gradient attacks see noise; figures are upper bounds unless attacked with "
                          "expectation over transformations", RobustDMLWarning, stacklevel=3)
        _check_gradients(model, example)
    return Normalized(model) if normalize else model


def _check_gradients(model: nn.Module, example: torch.Tensor) -> None:
    x = example.detach().clone().requires_grad_(True)
    direction = torch.randn(len(example), 1, generator=torch.Generator().manual_seed(0)).to(x.device)
    try:
        with torch.enable_grad():
            (model(x).float().sum(dim=1, keepdim=True) * direction).sum().backward(inputs=[x])
        grad = x.grad
    except RuntimeError:
        grad = None
    if grad is None or not torch.isfinite(grad).all() or not grad.abs().sum() > 0:
        warnings.warn("no gradient reaches the input (the model detaches, quantises or is not differentiable): "
                      "gradient attacks cannot move it, so their figures say nothing; rely on the gradient-free "
                      "Square attack and transfer from a surrogate", RobustDMLWarning, stacklevel=3)
