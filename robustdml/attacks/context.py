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

    def require(self, needs: tuple[str, ...], attack: str) -> None:
        known = {f.name for f in fields(self)}
        unknown = [n for n in needs if n not in known]
        if unknown:
            raise TypeError(f"attack '{attack}' needs {', '.join(unknown)}, which AttackContext does not have")
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            hint = " (--surrogate PATH)" if "surrogate" in missing else ""
            raise ConfigError(f"the {attack} attack needs {', '.join(missing)} in its context{hint}")
