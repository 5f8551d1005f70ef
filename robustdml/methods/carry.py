"""Carried perturbations (ATTA: Zheng et al., "Efficient Adversarial Training with Transferable
Adversarial Examples", arXiv 1912.11969): each training image keeps the perturbation its last
adversary found, and the next epoch's adversary starts from it, so that a step or two per epoch
accumulate into a strong attack.

The bank holds one perturbation per training image, compactly: int8 in units of eps / 127 (every
coordinate of a perturbation within an L∞ or an L2 ball of radius eps lies in [-eps, eps]), so a
training set of N images of C×H×W pixels costs N·C·H·W bytes (Fashion-MNIST: 47 MB; digits: 57 KB),
saved in every checkpoint so that ``--resume`` continues bit-identically. A perturbation follows
its image by training-set index, wherever the sampler puts it. Read back, it is re-projected onto
the budget and onto [0, 1] around the image it is added to.
"""

from __future__ import annotations

import torch

from ..attacks import Norm, ascent_step, project
from ..errors import ConfigError
from ..registry import flag

QUANTA = 127


class PerturbationBank:
    """Per-image perturbations of a training set, stored as int8 in units of ``eps / 127``."""

    def __init__(self, num_samples: int, eps: float, norm: Norm):
        self.num_samples, self.eps, self.norm = int(num_samples), float(eps), Norm(norm)
        self.values: torch.Tensor | None = None  # (N, C, H, W) int8, allocated at the first batch
        self.seen = torch.zeros(self.num_samples, dtype=torch.bool)

    @property
    def nbytes(self) -> int:
        return 0 if self.values is None else self.values.numel()

    def start(self, x: torch.Tensor, index: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """Starting perturbations of the batch ``x`` of training images ``index``: each image's
        carried one, re-projected onto the budget around ``x``; ``fresh`` where an image has none yet."""
        index = index.cpu()
        if self.values is None:
            self.values = torch.zeros((self.num_samples, *x.shape[1:]), dtype=torch.int8)
        seen = self.seen[index]
        if not seen.any():
            return fresh
        carried = self.values[index].to(x.device, torch.float32) * (self.eps / QUANTA)
        mask = seen.to(x.device).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(mask, project(x, carried, self.eps, self.norm), fresh)

    def keep(self, index: torch.Tensor, delta: torch.Tensor) -> None:
        """Store the batch's final perturbations (rounded to the nearest quantum). An image in
        several rows (a negative of several anchors) keeps its last row's: chosen explicitly, as a
        write of duplicate indices would keep whichever row a thread wrote last."""
        index = index.cpu()
        quanta = (delta.detach().float().cpu() * (QUANTA / max(self.eps, 1e-12))).round().clamp(-QUANTA, QUANTA)
        unique, inverse = torch.unique(index, return_inverse=True)
        if len(unique) < len(index):
            last = torch.zeros(len(unique), dtype=torch.long).scatter_reduce(
                0, inverse, torch.arange(len(index)), reduce="amax", include_self=False)
            index, quanta = unique, quanta[last]
        self.values[index] = quanta.to(torch.int8)
        self.seen[index] = True

    @classmethod
    def kept_in(cls, banks: dict, key, num_samples: int, eps: float, norm: Norm) -> "PerturbationBank":
        """``banks[key]``, made (empty) at its first use."""
        if key not in banks:
            banks[key] = cls(num_samples, eps, norm)
        return banks[key]

    def state_dict(self) -> dict:
        return {"values": self.values, "seen": self.seen.clone(), "eps": self.eps}

    def load_state_dict(self, state: dict) -> None:
        self.values = None if state["values"] is None else state["values"].clone()
        self.seen = state["seen"].clone()


def free_step_option(free_step, init: str) -> bool:
    """The ``free_step`` option of a training adversary: a boolean, and only with ``init: carry``."""
    if flag("free_step", free_step) and init != "carry":
        raise ConfigError("free_step moves each image's carried perturbation after the update: it needs init: carry")
    return free_step


def stepped_on(adversarial: torch.Tensor, clean: torch.Tensor, eps: float, norm: Norm, step_size: float) -> torch.Tensor:
    """The free step: the perturbation of the leaf ``adversarial`` one projected step further up the
    gradient the update's backward pass left on it; as found where no loss used it (no gradient)."""
    delta = adversarial.detach() - clean
    if adversarial.grad is None:
        return delta
    return ascent_step(clean, delta, adversarial.grad, eps, norm, step_size)
