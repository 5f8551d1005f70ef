"""ACT, Anti-Collapse Triplet: Zhou et al., "Adversarial Attack and Defense in Deep Ranking",
arXiv 2106.03614 (RobRank's ``pnp`` defence, ``robrank/defenses/pnp.py``).

The adversary collapses each triplet's positive and negative onto each other (PGD minimising
d(f(p'), f(n')), both perturbed together); the model learns to keep them apart: the triplet loss of
(clean anchor, p', n'). Its triplets are RobRank's random ones (``ranking_common``). With a loss other
than RobRank's triplet (Proxy Anchor, say), that loss of the anchors, p' and n' with their labels (ours).
"""

from __future__ import annotations

import torch

from ..losses import mine_triplets
from .base import register_method
from .ranking_common import RankingAdversary, RankingDefence, adversarial_triplet_loss, distance, roles


@register_method
class ACT(RankingDefence):
    """Anti-collapse triplet training; eps = 0 trains the clean triplets.

    Args:
        eps, steps, step_size, init: the adversary, as for ``est`` (RobRank's defaults).
        carry_by: with ``init: carry``, ``role`` (an image carries one perturbation as a positive and
            another as a negative) or ``image`` (one, whatever its role; ours, docs/design-choices.md).
        free_step: with ``init: carry``, one more step of each carried perturbation after the update,
            up the triplet loss's input gradient (ours).
    """

    name = "act"

    def __init__(self, eps: float | None = None, steps: int = 32, step_size: float | None = None,
                 init: str = "zero", carry_by: str = "role", free_step: bool = False):
        self.adversary = RankingAdversary(eps, steps, step_size, init, carry_by, free_step)

    def loss(self, model, criterion, images, labels, index):
        triplets = anchors, positives, negatives = mine_triplets(labels)
        if len(anchors) == 0:
            return criterion(model(images), labels)
        half = len(anchors)
        pn = torch.cat([images[positives], images[negatives]])
        pn_adv = self.adversary(model, pn, lambda emb: -distance(emb[:half], emb[half:]),
                                index=roles(index, positives, negatives))
        pn_emb = model(pn_adv)
        return adversarial_triplet_loss(criterion, model(images[anchors]), pn_emb[:half], pn_emb[half:],
                                        labels, triplets)
