"""Ensemble Adversarial Training (EAT): X. Ke, "Towards Adversarially Robust Deep Metric Learning",
arXiv 2501.01025.

What the paper states: the training set is randomly split into N parts and each member trains on a
combination of them (diversity, so one adversarial example is unlikely to fool every member); a
self-transferring mechanism brings the robustness of the whole ensemble into every member's update.

Our choices where the text is silent (docs/eat.md): N members of one architecture with independent
initialisation and their own Proxy Anchor proxies; a seeded random partition of the training
samples, member i training on ``parts_per_member`` parts starting after part i (default N - 1:
every part except part i; with RobRank's pair triplet loss a pair follows its anchor's part); self-transfer as adversarial examples crafted against the *whole
ensemble* (the attack maximises the ensemble embedding's displacement or the ensemble's loss), each
member updated on those that fall in its own parts. ``transfer="self"`` (each member crafts against
itself) and ``split="none"`` are the ablations; both together are the plain-ensemble control.
Other readings of self-transfer, each ours (docs/eat.md): ``transfer="cross"``, distillation towards
the ensemble (``distill``) and the gradient-alignment diversity penalty (``diversity="gal"``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..losses import PairTripletLoss
from ..models import EnsembleNet
from ..models.batched import BatchedEnsemble, can_batch
from ..models.graphed import GraphedModule
from ..registry import switch
from .adversarial import AdversarialMethod, TrainingAttack
from .base import TrainingSetup, register_method
from .eat_terms import distillation, ensemble_target, gradient_alignment

SPLITS = ("random", "none")
TRANSFERS = ("ensemble", "self", "cross")
DISTILL_TARGETS = ("clean", "adversarial")
DIVERSITIES = ("none", "gal")
BNS = ("own", "shared")
BATCHED = ("auto", "on", "off")


def partition(num_samples: int, parts: int, seed: int) -> np.ndarray:
    """The part (0..parts-1) of every training sample: a seeded random split into near-equal parts."""
    order = np.random.default_rng([seed, 2501]).permutation(num_samples)
    part_of = np.empty(num_samples, dtype=np.int64)
    for p, chunk in enumerate(np.array_split(order, parts)):
        part_of[chunk] = p
    return part_of


def member_parts(members: int, parts_per_member: int) -> list[list[int]]:
    """Member i trains on parts i+1, ..., i+parts_per_member (mod N): all but part i by default."""
    return [sorted((i + 1 + j) % members for j in range(parts_per_member)) for i in range(members)]


class _EnsembleLoss(nn.ModuleList):
    """One loss per member (each with its own proxies); ``self[i]`` is member i's."""


@register_method
class EAT(AdversarialMethod):
    """Ensemble Adversarial Training.

    Args:
        members: N (default 3).
        parts_per_member: parts each member trains on (default N - 1).
        split: ``"random"`` (default) or ``"none"`` (every member sees every sample).
        transfer: ``"ensemble"`` (default: examples crafted against the whole ensemble), ``"self"``
            (each member crafts against itself) or ``"cross"`` (member i trains on examples crafted
            against the other members: Tramèr et al., "Ensemble Adversarial Training",
            arXiv 1705.07204, with the members as the static models).
        distill: λ ≥ 0 (default 0: off) — each member's loss gains λ · mean(1 − cos) between its
            embedding of its adversarial examples and the ensemble's (no-gradient, eval-mode)
            embedding of the ``distill_target``: ``"clean"`` (default) or ``"adversarial"`` images.
        bn: ``"own"`` (default: a member's BatchNorm sees only its own rows) or ``"shared"``: every
            member embeds the whole ensemble-crafted batch, so that its batch statistics (and
            running statistics) are pooled over every member's adversarial examples, while its
            loss stays on its own rows (needs ``transfer: ensemble`` and a backbone with BatchNorm).
        diversity: ``"none"`` (default) or ``"gal"``: ``diversity_weight`` (default 0.5) times the
            gradient-alignment penalty between the members' input gradients on the clean batch.
        combine: ensemble embedding, ``"mean"`` (default) or ``"concat"``.
        eps, steps, step_size, objective, norm, init, preset, free_step: the training attack, as for ``pgd-at``
            (with ``transfer: self`` or ``cross`` and ``init: carry`` each member carries its own perturbations).
        batched: how the ensemble-crafted attack runs the members — ``"on"``: as one vmapped module
            (:class:`~robustdml.models.batched.BatchedEnsemble`: one kernel launch per layer for all
            members; the same examples as the loop, to float rounding), ``"off"``: one after the
            other, ``"auto"`` (default): batched on a CUDA device when the members share one
            architecture, where launches dominate; the loop on the CPU, where batching saves nothing.

    Example:
        robustdml train --config configs/digits.yaml --out runs/eat method=eat method_kwargs.members=3
    """

    name = "eat"

    def __init__(self, members: int = 3, parts_per_member: int | None = None, split: str = "random",
                 transfer: str = "ensemble", combine: str = "mean", eps: float | None = None, steps: int = 10,
                 step_size: float | None = None, objective: str = "displacement", norm: str | None = None,
                 init: str = "random", preset: str | None = None, batched: str = "auto", distill: float = 0.0,
                 distill_target: str = "clean", diversity: str = "none", diversity_weight: float = 0.5,
                 bn: str = "own", free_step: bool = False):
        if int(members) != members or members < 1:
            raise ConfigError(f"members (N) must be a whole number >= 1, got {members}")
        ppm = parts_per_member if parts_per_member is not None else max(members - 1, 1)
        if int(ppm) != ppm or not 1 <= ppm <= members:
            raise ConfigError(f"parts_per_member must be between 1 and members ({members}), got {ppm}")
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, not '{split}'")
        if transfer not in TRANSFERS:
            raise ConfigError(f"transfer must be one of {', '.join(TRANSFERS)}, not '{transfer}'")
        if transfer == "cross" and members < 2:
            raise ConfigError("transfer: cross crafts each member's examples against the others: it needs members >= 2")
        if not distill >= 0 or distill_target not in DISTILL_TARGETS:
            raise ConfigError(f"distill must be >= 0 (got {distill}) and distill_target one of "
                              f"{', '.join(DISTILL_TARGETS)} (got '{distill_target}')")
        if diversity not in DIVERSITIES or not diversity_weight >= 0:
            raise ConfigError(f"diversity must be one of {', '.join(DIVERSITIES)} (got '{diversity}') and "
                              f"diversity_weight >= 0 (got {diversity_weight})")
        if diversity == "gal" and members < 2:
            raise ConfigError("diversity: gal aligns the members' gradients pairwise: it needs members >= 2")
        if bn not in BNS or (bn == "shared" and transfer != "ensemble"):
            raise ConfigError(f"bn must be one of {', '.join(BNS)} (got '{bn}'); bn: shared pools the statistics of "
                              "the one ensemble-crafted batch, so it needs transfer: ensemble")
        self.distill, self.distill_target, self.bn = float(distill), distill_target, bn
        self.diversity_weight = float(diversity_weight) if diversity == "gal" else 0.0
        if combine not in EnsembleNet.COMBINES:
            raise ConfigError(f"combine must be one of {', '.join(EnsembleNet.COMBINES)}, not '{combine}'")
        batched = switch(batched)
        if batched not in BATCHED:
            raise ConfigError(f"batched must be one of {', '.join(BATCHED)}, not '{batched}'")
        self.members, self.parts_per_member, self.batched = int(members), int(ppm), batched
        self.split, self.transfer, self.combine = split, transfer, combine
        self.adversary = TrainingAttack(eps, steps, step_size, objective, norm, init, preset, free_step)
        self.part_of: torch.Tensor | None = None
        self.parts = member_parts(self.members, self.parts_per_member)

    @property
    def graphable(self) -> bool:
        """GAL differentiates input gradients, the free step reuses the update's: neither runs graphed."""
        return not self.diversity_weight and not self.adversary.free_step

    def build_model(self, make_model):
        model = EnsembleNet([make_model() for _ in range(self.members)], combine=self.combine)
        if self.bn == "shared" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ConfigError("bn: shared pools BatchNorm statistics, and this backbone has no BatchNorm; use bn: own")
        return model

    def build_criterion(self, make_criterion):
        return _EnsembleLoss([make_criterion() for _ in range(self.members)])

    def setup(self, run: TrainingSetup) -> None:
        super().setup(run)
        self.part_of = torch.from_numpy(partition(run.num_samples, self.members, run.seed))

    def masks(self, index: torch.Tensor) -> list[torch.Tensor]:
        """Which samples of the batch each member trains on."""
        if self.split == "none":
            return [torch.ones(len(index), dtype=torch.bool) for _ in range(self.members)]
        if self.part_of is None:
            raise RuntimeError("EAT.setup() was not called with the training-set size")
        parts = self.part_of[index.cpu()]
        return [torch.isin(parts, torch.tensor(p)) for p in self.parts]

    def loss(self, model, criterion, images, labels, index):
        if not isinstance(model, EnsembleNet) or len(model.members) != self.members:
            raise ConfigError("the eat method trains the ensemble it builds; got another model")
        if isinstance(criterion[0], PairTripletLoss):
            # pair batches (anchor, positive, ...) stay whole: a pair goes where its anchor's part goes
            masks = [m.repeat_interleave(2) for m in self.masks(index[0::2])]
        else:
            masks = self.masks(index)  # on the CPU, so choosing rows costs no device synchronisation
        # self-transfer: what fools the whole ensemble teaches every member
        shared = self.craft(model, criterion, images, labels, index) if self.transfer == "ensemble" else None
        # the distillation target of the whole batch, where every member shares it
        batch_target = None
        if self.distill and (self.distill_target == "clean" or shared is not None):
            batch_target = ensemble_target(model, images if self.distill_target == "clean" else shared)
        total = images.new_zeros(())
        for i, (member, member_loss, mask) in enumerate(zip(model.members, criterion, masks)):
            if not mask.any():
                continue
            rows = mask.nonzero().squeeze(1).to(images.device, non_blocking=True)
            x, y = images.index_select(0, rows), labels.index_select(0, rows)
            x_adv = (shared.index_select(0, rows) if shared is not None
                     else self.craft_for_member(model, criterion, i, x, y, index[mask.to(index.device)]))
            embedding = member(shared).index_select(0, rows) if self.bn == "shared" else member(x_adv)
            total = total + member_loss(embedding, y)
            if self.distill:
                target = batch_target.index_select(0, rows) if batch_target is not None else ensemble_target(model, x_adv)
                total = total + self.distill * distillation(embedding, target)
        if self.diversity_weight:
            total = total + self.diversity_weight * gradient_alignment(model.members, criterion, images, labels)
        return total

    def craft(self, model: EnsembleNet, criterion: nn.ModuleList, images, labels, index, slot: int = 0):
        """Adversarial examples crafted against ``model`` (an ensemble of some or all members)."""
        target = self.attacked(model, images.device)
        if self.adversary.objective == "loss":
            return self.adversary(_MemberStack(target), _SummedLoss(criterion), images, labels, index, slot=slot)
        return self.adversary(target, None, images, labels, index, slot=slot)

    def craft_for_member(self, model: EnsembleNet, criterion: nn.ModuleList, i: int, images, labels, index):
        """Member i's own examples: crafted against itself (``self``) or against the others (``cross``)."""
        if self.transfer == "self":
            return self.adversary(model.members[i], criterion[i], images, labels, index, slot=i)
        others = [j for j in range(self.members) if j != i]
        ensemble = EnsembleNet([model.members[j] for j in others], combine=model.combine)
        losses = nn.ModuleList([criterion[j] for j in others])
        return self.craft(ensemble, losses, images, labels, index, slot=i)

    def attacked(self, model: EnsembleNet, device: torch.device) -> nn.Module:
        """The module the ensemble-crafted attack runs: the ensemble, or its members batched."""
        if self.batched == "off" or (self.batched == "auto" and (device.type != "cuda" or _graphed(model))):
            return model  # graphed members (robustdml.models.graphed) replay their own passes: the loop
        if not can_batch(model):
            if self.batched == "on":
                raise ConfigError("batched: on needs members of one architecture; use batched: off")
            return model
        return BatchedEnsemble(model)  # this batch's weights: the attack does not change them


def _graphed(model: EnsembleNet) -> bool:
    return any(isinstance(m, GraphedModule) for m in model.members)


class _MemberStack(nn.Module):
    """The members' embeddings side by side (B, N·D), so an attack can maximise the ensemble's loss."""

    def __init__(self, model: EnsembleNet | BatchedEnsemble):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.stacked(x).permute(1, 0, 2).reshape(x.shape[0], -1)


class _SummedLoss(nn.Module):
    """The ensemble's loss for the ``loss`` objective: the sum of the members' losses."""

    def __init__(self, criterion: nn.ModuleList):
        super().__init__()
        self.criterion = criterion

    def forward(self, stacked, labels):
        chunks = stacked.chunk(len(self.criterion), dim=1)
        return sum(loss(e, labels) for loss, e in zip(self.criterion, chunks))
