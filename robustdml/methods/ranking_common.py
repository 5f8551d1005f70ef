"""What RobRank's defences (``est``, ``act``, ``hm``) share: their training adversary and the
triplets they perturb.

The adversary is RobRank's: L∞ signed-gradient PGD from the clean images (no random start), the
model in eval mode, 32 steps (``init: carry``, ours: from each image's perturbation of its last
visit, one per role it was perturbed in, or with ``carry_by: image`` one whatever its role; with
``free_step``, ours too, each carried perturbation takes one more signed step after the update, up
the training loss's input gradient that the update's backward pass computes anyway); eps
from the dataset's threat model (77/255 on Fashion-MNIST, 8/255 on the 224-pixel datasets) and
RobRank's step for it (3/255 for its 28-pixel budget, 1/255 for its 224-pixel one; ours: 3/255
whenever eps exceeds 16/255).

Triplets are RobRank's ``spc2-random`` ones on pair batches (``sampler: pairs``), and ours on any
other batch (:func:`robustdml.losses.mine_triplets`, shared with the pair triplet loss).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import Norm, ThreatModel, check_eps, parse_eps
from ..attacks.optim import gradient_ascent
from ..errors import ConfigError
from ..losses import PairTripletLoss
from ..models.modes import eval_mode
from .adversarial import AdversarialMethod
from .carry import PerturbationBank, free_step_option, stepped_on

#: RobRank's triplet margin for normalised Euclidean embeddings
MARGIN = 0.2


#: how carried perturbations are kept: one per role an image was perturbed in, or one per image
CARRY_BY = ("role", "image")


def robrank_step(eps: float) -> float:
    """RobRank's PGD step for a budget: 3/255 for its 28-pixel eps (77/255), 1/255 for its 224-pixel one (8/255)."""
    return 3 / 255 if eps > 16 / 255 else 1 / 255


class RankingAdversary:
    """The training adversary of RobRank's defences: maximises ``objective(x')`` (a per-row value;
    the PGD uses its sum) over the L∞ ball by signed gradient steps from the clean images.

    ``free_step`` (with ``init: carry``): the adversarial rows are returned as a leaf, and after the
    update's backward pass (:meth:`after_backward`) each carried perturbation takes one more signed
    step of the adversary's size up the gradient that pass left on it — the training loss's, not the
    adversary's own objective — before it is kept for the image's next visit."""

    def __init__(self, eps: float | None = None, steps: int = 32, step_size: float | None = None,
                 init: str = "zero", carry_by: str = "role", free_step: bool = False):
        if init not in ("zero", "carry"):
            raise ConfigError(f"init must be zero (RobRank's: from the clean images) or carry, not '{init}'")
        if carry_by not in CARRY_BY:
            raise ConfigError(f"carry_by must be one of {', '.join(CARRY_BY)}, not '{carry_by}'")
        if carry_by != "role" and init != "carry":
            raise ConfigError("carry_by says how carried perturbations are kept: it needs init: carry")
        self.init, self.carry_by, self.num_samples = init, carry_by, None
        self.free_step = free_step_option(free_step, init)
        # the batch's adversarial leaf, its clean rows and their (bank, positions) per role (free_step)
        self.pending: list[tuple[torch.Tensor, torch.Tensor, list]] = []
        # one per role of the perturbed rows (e.g. positive, negative), or one for all (carry_by: image)
        self.banks: dict[int, PerturbationBank] = {}
        eps = None if eps is None else check_eps(parse_eps(eps), Norm.LINF)
        step_size = None if step_size is None else parse_eps(step_size, "step_size")
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be a whole number >= 1, got {steps!r}")
        if step_size is not None and not step_size > 0:
            raise ConfigError(f"step_size must be a positive number, got {step_size!r}")
        self.eps, self.steps, self.step_size = eps, steps, step_size
        self.bound_eps: float | None = None
        if eps is not None:
            self.bind(ThreatModel(eps, Norm.LINF))

    def bind(self, threat: ThreatModel) -> None:
        if threat.norm is not Norm.LINF and self.eps is None:
            raise ConfigError("RobRank's defences train against an L-infinity adversary; set the method's eps")
        self.bound_eps = float(self.eps if self.eps is not None else threat.eps)

    def state_dict(self) -> dict:
        """The carried perturbations (``init: carry``); with RobRank's start from the clean images, nothing."""
        return {"banks": {role: bank.state_dict() for role, bank in self.banks.items()}} if self.banks else {}

    def load_state_dict(self, state: dict) -> None:
        for role, bank_state in state.get("banks", {}).items():
            bank = PerturbationBank(self.num_samples, bank_state["eps"], Norm.LINF)
            bank.load_state_dict(bank_state)
            self.banks[int(role)] = bank

    @property
    def step(self) -> float:
        return self.step_size if self.step_size is not None else robrank_step(self.bound_eps)

    def __call__(self, model: nn.Module, images: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor],
                 stop_when_flat: bool = False, index: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Maximise ``objective(embeddings)`` of the model's embeddings of the perturbed ``images``.
        ``stop_when_flat``: stop once the summed objective changes by less than 1e-7 between two
        steps (RobRank's hardness manipulation does, to save time once every triplet is where it
        should be). ``index`` (with ``init: carry``): the rows' training-set positions, one tensor
        per role in the order of the rows (e.g. ``[index[positives], index[negatives]]``): each role
        carries its own perturbation of an image (``carry_by: role``), or every role the image's one
        (``carry_by: image``; an image in several rows keeps the last row's)."""
        if self.bound_eps is None:
            raise RuntimeError("the training adversary has no eps: pass eps or call the method's setup() first")
        x = images.detach()
        if self.bound_eps == 0:
            return x
        roles = self._roles(x, index)
        start = torch.cat([bank.start(part, i, torch.zeros_like(part)) for bank, part, i in roles]) if roles \
            else torch.zeros_like(x)
        with eval_mode(model):
            delta = gradient_ascent(lambda adversarial: objective(model(adversarial)), x, start,
                                    self.bound_eps, Norm.LINF, self.steps, self.step, stop_when_flat=stop_when_flat)
        if self.free_step:  # kept by after_backward, one step further on
            adversarial = (x + delta).detach().requires_grad_(True)
            self.pending.append((adversarial, x, [(bank, i) for bank, _, i in roles]))
            return adversarial
        if roles:
            self._keep([(bank, i) for bank, _, i in roles], delta)
        return (x + delta).detach()

    def after_backward(self) -> None:
        """The free step: each carried perturbation of the batch moves once more, up the gradient
        the update's backward pass left on its adversarial rows, and is kept for the next visit."""
        for adversarial, x, kept_in in self.pending:
            self._keep(kept_in, stepped_on(adversarial, x, self.bound_eps, Norm.LINF, self.step))
        self.pending.clear()

    @staticmethod
    def _keep(kept_in: list, delta: torch.Tensor) -> None:
        """Store each role's rows of ``delta`` in its bank, at their training-set positions."""
        for (bank, i), kept in zip(kept_in, delta.split([len(i) for _, i in kept_in])):
            bank.keep(i, kept)

    def _roles(self, x: torch.Tensor, index: list[torch.Tensor] | None) -> list:
        """(bank, rows, their training-set positions) per role, with ``init: carry``; else none."""
        if self.init != "carry":
            return []
        if index is None or self.num_samples is None:
            raise RuntimeError("carried perturbations need the rows' training-set index and the method's setup()")
        if sum(len(i) for i in index) != len(x):
            raise ValueError(f"index covers {sum(len(i) for i in index)} rows of {len(x)}")
        banks = [PerturbationBank.kept_in(self.banks, 0 if self.carry_by == "image" else role, self.num_samples,
                                          self.bound_eps, Norm.LINF)
                 for role in range(len(index))]
        return list(zip(banks, x.split([len(i) for i in index]), index))


def roles(index: torch.Tensor | None, *rows: torch.Tensor) -> list[torch.Tensor] | None:
    """The training-set positions of the perturbed rows, per role: ``index`` itself (the whole
    batch perturbed), or ``index[rows]`` for each role's rows (e.g. the positives, the negatives)."""
    if index is None:
        return None
    index = index.cpu()
    return [index] if not rows else [index[r.cpu()] for r in rows]


class RankingDefence(AdversarialMethod):
    """Base of ``est``, ``act`` and ``hm``: the adversary bound to the dataset's threat model."""

    adversary: RankingAdversary


@torch.no_grad()
def clean_embeddings(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The model's embeddings of the clean batch in eval mode (its mode restored), without gradients."""
    with eval_mode(model):
        return model(images)


def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance of the L2-normalised embeddings (RobRank's metric ``N``)."""
    return (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).norm(dim=-1)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = MARGIN) -> torch.Tensor:
    """Per-triplet ``relu(d(a, p) - d(a, n) + margin)`` (RobRank's ``lossfunc.raw``)."""
    return (distance(anchor, positive) - distance(anchor, negative) + margin).clamp_min(0)


def adversarial_triplet_loss(criterion: nn.Module, anchor: torch.Tensor, positive: torch.Tensor,
                             negative: torch.Tensor, labels: torch.Tensor,
                             triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The training loss on (possibly perturbed) triplet embeddings: with RobRank's pair triplet loss,
    its triplet loss on exactly these triplets (its margin); with any other loss (Proxy Anchor...),
    that loss on the three sets of embeddings with their labels (ours)."""
    if isinstance(criterion, PairTripletLoss):
        return triplet_loss(anchor, positive, negative, criterion.margin).mean()
    a, p, n = triplets
    return criterion(torch.cat([anchor, positive, negative]), torch.cat([labels[a], labels[p], labels[n]]))
