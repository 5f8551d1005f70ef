"""HM, Hardness Manipulation, with the Intra-Class Structure loss (ICS): Zhou & Patel, "Enhancing
Adversarial Robustness for Deep Metric Learning", CVPR 2022 (arXiv 2203.01439; RobRank's
``robrank/defenses/amd.py``).

The hardness of a triplet is H = d(a, p) - d(a, n). The adversary perturbs the anchor, positive and
negative of each (random) source triplet to raise its hardness to a destination H_D, and the model
trains on the triplet loss of the perturbed triplets. Destinations:

- ``gradual`` (default; the paper's linear gradual adversary, as RobRank's code computes it):
  H_D = -margin * clip(L_prev, 0, margin) / margin, with L_prev the previous batch's adversarial loss
  (2.0 before the first), so the adversary is mild while the model is weak and approaches the
  semi-hard boundary (H = 0) as it learns;
- ``semihard``: H of a semi-hard triplet of the same anchor and positive in the clean batch
  (a negative with d(a, p) < d(a, n) < d(a, p) + margin; a random one where none is).

The adversary matches hardness one-sidedly, maximising -min(0, H - H_D)^2 (the paper's ET matching;
ours for both destinations), and stops once the objective no longer moves, as RobRank's does. ICS
adds ``ics_weight`` * relu(d(a, a') - d(a, p)) on the clean anchor a, its adversarial version a' and
the clean positive p (weight 0.5, RobRank's), keeping the adversarial anchor nearer its clean self
than its positive is.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..losses import PairTripletLoss, mine_triplets
from ..registry import flag
from .base import register_method
from .ranking_common import (MARGIN, RankingAdversary, RankingDefence, adversarial_triplet_loss, clean_embeddings,
                             distance, roles)

DESTINATIONS = ("gradual", "semihard")


def semihard_negatives(embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor,
                       positives: torch.Tensor, negatives: torch.Tensor, margin: float) -> torch.Tensor:
    """For each (anchor, positive), a random semi-hard negative of the batch; ``negatives`` where none is."""
    d_ap = distance(embeddings[anchors], embeddings[positives])
    d_an = distance(embeddings[anchors, None, :], embeddings[None, :, :])
    other = labels[anchors, None] != labels[None, :]
    semihard = other & (d_an > d_ap[:, None]) & (d_an < d_ap[:, None] + margin)
    found = semihard.any(1)
    chosen = negatives.clone()
    if found.any():
        chosen[found] = torch.multinomial(semihard[found].float(), 1).squeeze(1)
    return chosen


@register_method
class HM(RankingDefence):
    """Hardness manipulation (+ ICS); see the module doc.

    Args:
        destination: ``"gradual"`` (default) or ``"semihard"``.
        ics: add the intra-class structure loss (default True).
        ics_weight: its weight (default 0.5).
        eps, steps, step_size, init: the adversary, as for ``est`` (RobRank's defaults).
        carry_by: with ``init: carry``, ``role`` (one perturbation of an image per role: anchor,
            positive, negative) or ``image`` (one, whatever its role; ours).
        free_step: with ``init: carry``, one more step of each carried perturbation after the update,
            up the training loss's input gradient (ours).
    """

    name = "hm"

    def __init__(self, destination: str = "gradual", ics: bool = True, ics_weight: float = 0.5,
                 eps: float | None = None, steps: int = 32, step_size: float | None = None, init: str = "zero",
                 carry_by: str = "role", free_step: bool = False):
        if destination not in DESTINATIONS:
            raise ConfigError(f"destination must be one of {', '.join(DESTINATIONS)}, not '{destination}'")
        if not isinstance(ics_weight, (int, float)) or ics_weight < 0:
            raise ConfigError(f"ics_weight must be a number >= 0, got {ics_weight!r}")
        self.destination, self.ics, self.ics_weight = destination, flag("ics", ics), float(ics_weight)
        self.adversary = RankingAdversary(eps, steps, step_size, init, carry_by, free_step)
        self.previous_loss = 2.0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "previous_loss": self.previous_loss}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.previous_loss = float(state.get("previous_loss", 2.0))

    def _destination(self, model, images, labels, triplets, margin) -> torch.Tensor:
        anchors, positives, negatives = triplets
        if self.destination == "gradual":
            level = min(max(self.previous_loss, 0.0), margin) / margin
            return torch.full((len(anchors),), -margin * level, device=images.device)
        clean = clean_embeddings(model, images)
        hard = semihard_negatives(clean, labels, anchors, positives, negatives, margin)
        return distance(clean[anchors], clean[positives]) - distance(clean[anchors], clean[hard])

    def loss(self, model, criterion, images, labels, index):
        triplets = anchors, positives, negatives = mine_triplets(labels)
        if len(anchors) == 0:
            return criterion(model(images), labels)
        margin = criterion.margin if isinstance(criterion, PairTripletLoss) else MARGIN
        target = self._destination(model, images, labels, triplets, margin)
        k = len(anchors)

        def matched(emb):
            hardness = distance(emb[:k], emb[k:2 * k]) - distance(emb[:k], emb[2 * k:])
            return -(hardness - target).clamp(max=0).square()

        apn = torch.cat([images[anchors], images[positives], images[negatives]])
        apn_adv = self.adversary(model, apn, matched, stop_when_flat=True, index=roles(index, anchors, positives, negatives))
        emb = model(apn_adv)
        loss = adversarial_triplet_loss(criterion, emb[:k], emb[k:2 * k], emb[2 * k:], labels, triplets)
        self.previous_loss = float(loss.detach())
        if self.ics and self.ics_weight > 0:
            clean = model(torch.cat([images[anchors], images[positives]]))
            structure = (distance(clean[:k], emb[:k]) - distance(clean[:k], clean[k:])).clamp_min(0).mean()
            loss = loss + self.ics_weight * structure
        return loss
