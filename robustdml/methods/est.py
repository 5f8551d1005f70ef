"""EST, Embedding-Shifted Triplet: Zhou et al., "Adversarial Ranking Attack and Defense", ECCV 2020
(arXiv 2002.11293), as RobRank trains it (``robrank/defenses/est.py``).

Each batch is replaced by its embedding-shift adversarial examples — PGD maximising the Euclidean
distance between the normalised embeddings of x' and x (RobRank's ES attack) — and the model trains
on the configured loss of those. Agnostic to the loss and the backbone. At iteration 0 the clean
embedding is offset by ±1e-7 per coordinate, as RobRank does, since the distance has no gradient
at x' = x: the first step goes in a random direction, as RobRank's cosine-metric (``C``) EST does.

``robrank_compat`` reproduces RobRank's Euclidean-metric (``N``) EST: its embedding shift is torch's
``pairwise_distance``, which adds 1e-6 to every coordinate of the difference. At x' = x that offset
outweighs the ±1e-7 one, so the first step ascends toward the same all-ones embedding direction for
every image; at later steps the shift is far above 1e-6 and neither offset matters (RobRank adds the
±1e-7 at the first step only, we at every step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import flag
from .base import register_method
from .ranking_common import RankingAdversary, RankingDefence, clean_embeddings, roles


@register_method
class EST(RankingDefence):
    """Train on embedding-shifted examples: ``criterion(f(x_ES), y)``; eps = 0 is standard training.

    Args:
        eps: the budget (default: the dataset's threat model: 77/255 on Fashion-MNIST, 8/255 on the
            224-pixel datasets).
        steps: PGD steps (default 32, RobRank's; its code offers 8 for speed).
        step_size: default 3/255 for eps above 16/255, else 1/255 (RobRank's two profiles).
        robrank_compat: the embedding shift as RobRank's metric-N code computes it (its first step
            toward one fixed direction; see the module's text). Default off: a random first step.
        init: ``zero`` (RobRank's: every batch from the clean images) or ``carry`` (ours: from each
            image's perturbation of its last visit; docs/design-choices.md).
        free_step: with ``init: carry``, one more step of each carried perturbation after the update,
            up the training loss's input gradient (ours).
    """

    name = "est"

    def __init__(self, eps: float | None = None, steps: int = 32, step_size: float | None = None,
                 robrank_compat: bool = False, init: str = "zero", free_step: bool = False):
        self.robrank_compat = flag("robrank_compat", robrank_compat)
        self.adversary = RankingAdversary(eps, steps, step_size, init, free_step=free_step)

    def loss(self, model, criterion, images, labels, index):
        if self.adversary.bound_eps == 0:
            return criterion(model(images), labels)
        clean = F.normalize(clean_embeddings(model, images), dim=1)
        target = clean + 1e-7 * torch.randint_like(clean, -1, 2)
        distance = F.pairwise_distance if self.robrank_compat else _distance  # the former: |a - b + 1e-6|
        adversarial = self.adversary(model, images, lambda emb: distance(F.normalize(emb, dim=1), target),
                                     index=roles(index))
        return criterion(model(adversarial), labels)


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=1)
