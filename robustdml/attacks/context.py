"""What an attack may know about the batch it perturbs, and the threat model it works in.

The context is one typed object, built by the robust evaluation for every batch
(:func:`robustdml.evaluation.robust.evaluate_robustness`) or by a training method for its own
adversary. An attack lists the fields it reads in ``needs``; a missing one is a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum

import torch
from torch import nn

from ..errors import ConfigError


class Norm(str, Enum):
    LINF = "linf"
    L2 = "l2"

    @property
    def symbol(self) -> str:
        return {"linf": "L∞", "l2": "L2"}[self.value]


_PIXEL_LEVELS = 255  # budgets are often written in 8-bit pixel levels: 8/255


def parse_eps(value, what: str = "eps") -> float:
    """A budget as a person writes it — ``0.1``, ``"0.1"``, ``"8/255"`` — as a float, or a one-line
    :class:`ConfigError`. Every place that takes an eps (CLI, YAML, options) reads it through here.

    Example:
        >>> parse_eps("8/255")
        0.03137254901960784
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a number or a fraction like 8/255, not {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    num, slash, den = text.partition("/")
    try:
        if slash:
            if float(den) == 0:
                raise ValueError
            return float(num) / float(den)
        return float(text)
    except ValueError:
        raise ConfigError(f"{what} must be a number or a fraction like 8/255, not {value!r}") from None


def check_eps(eps: float, norm: "Norm | str" = "linf", what: str = "eps") -> float:
    """``eps`` if it can be a budget for [0, 1] images under ``norm``, else a one-line error saying
    what was probably meant (an L∞ eps above 1 is a budget in pixel levels: 8 meant 8/255)."""
    if not eps >= 0:
        raise ConfigError(f"{what} must be >= 0, got {eps:g}")
    if Norm(norm) is Norm.LINF and eps > 1:
        raise ConfigError(f"{what} {eps:g} is above 1, but images are in [0, 1] and an L∞ budget above 1 changes "
                          f"nothing: did you mean {eps:g}/{_PIXEL_LEVELS}?")
    return eps


def format_eps(eps: float) -> str:
    """A budget as a person reads it: a short decimal where there is one (0.1, 0.05), else a
    fraction of 255 where it is one (8/255), else 6 significant digits."""
    short = f"{eps:.4g}"
    if abs(float(short) - eps) < 1e-12:
        return short
    levels = eps * _PIXEL_LEVELS
    if round(levels) >= 1 and abs(levels - round(levels)) < 2e-4:  # 2e-4: eps keys keep 6 significant digits
        return f"{round(levels)}/{_PIXEL_LEVELS}"
    return f"{eps:.6g}"


def format_budget(eps: float, norm: "Norm | str" = "linf") -> str:
    """``L∞ 8/255``, ``L2 0.5``: what every printed table says a figure was measured under."""
    return f"{Norm(norm).symbol} {format_eps(eps)}"


@dataclass(frozen=True)
class ThreatModel:
    """The adversary's budget: ``eps`` in [0, 1] pixel units under ``norm``. Every dataset has a
    default (``DatasetSpec.eps``, L∞); training methods and the attack suite receive it explicitly."""

    eps: float
    norm: Norm = Norm.LINF

    @classmethod
    def of(cls, dataset: str) -> "ThreatModel":
        from ..data import dataset_spec
        return cls(float(dataset_spec(dataset).eps))


@dataclass
class AttackContext:
    """Per-batch knowledge of the attacker. Every tensor's first dimension is the batch's B unless noted.

    Attributes:
        labels: (B,) true classes of the images being perturbed (white-box attacker; also the
            training labels inside training).
        centroids: (k, D) centroids of the clean k-means clustering of the test set.
        assignments: (B,) each image's cluster in that clean clustering.
        gallery: (N, D) clean reference embeddings (retrieval), ``gallery_labels`` (N,) their classes.
        self_index: (B,) each image's own position in the gallery, or -1.
        surrogate: a separate model for transfer attacks.
        criterion: the training loss (for attacks on the loss itself).
        targets: (B,) per-sample targets an attack planned with the whole pool in view
            (:meth:`Attack.plan`): a cluster, or a gallery position.
        start: (B, ...) where the gradient optimisers start instead of their random (or zero)
            start, projected onto the budget first: a training adversary's carried perturbations.
    """

    labels: torch.Tensor | None = None
    centroids: torch.Tensor | None = None
    assignments: torch.Tensor | None = None
    gallery: torch.Tensor | None = None
    gallery_labels: torch.Tensor | None = None
    self_index: torch.Tensor | None = None
    surrogate: nn.Module | None = None
    criterion: nn.Module | None = None
    targets: torch.Tensor | None = None
    start: torch.Tensor | None = None

    def require(self, needs: tuple[str, ...], attack: str) -> None:
        known = {f.name for f in fields(self)}
        unknown = [n for n in needs if n not in known]
        if unknown:
            raise TypeError(f"attack '{attack}' needs {', '.join(unknown)}, which AttackContext does not have")
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            hint = " (--surrogate PATH)" if "surrogate" in missing else ""
            raise ConfigError(f"the {attack} attack needs {', '.join(missing)} in its context{hint}")
