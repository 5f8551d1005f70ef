"""What RobRank's ranking attacks share: their profiles, the base class, distances and target
picks, the suite's attacks and columns (read from the attack registry) and the ERS."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from .base import Attack, CleanPool
from ..registry import Registry
from .registry import ATTACKS

#: RobRank's attack profiles: PGD, signed gradient, no random start.
PROFILES: Registry = Registry("robrank profile")
PROFILES.register({"eps": 77 / 255, "step_size": 3 / 255, "steps": 32}, name="rob28")
PROFILES.register({"eps": 8 / 255, "step_size": 3 / 255, "steps": 32}, name="rob224")
NEAREST_FRACTION = 0.01  # "top-1 %" of the database for ca- / qa- targets
RETAIN_K = 4


def unit_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, B) Euclidean distances between unit vectors, sqrt(2 - 2 cos), smooth at zero."""
    return (2 - 2 * a @ b.T).clamp_min(1e-12).sqrt()


def _chunks(n: int, size: int = 1024):
    for lo in range(0, n, size):
        yield lo, min(lo + size, n)


def _masked_distances(emb: torch.Tensor, database: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    dist = unit_distance(emb, database)
    rows = torch.nonzero(own >= 0).squeeze(1)
    dist[rows, own[rows]] = torch.inf
    return dist


def _nearest_excluding_first(pool: CleanPool, k: int) -> torch.Tensor:
    """(N, k) database positions of each pool image's k nearest after the very nearest (itself)."""
    out = []
    for lo, hi in _chunks(len(pool.embeddings)):
        dist = unit_distance(pool.embeddings[lo:hi], pool.reference)
        out.append(dist.topk(min(k + 1, dist.shape[1]), dim=1, largest=False).indices[:, 1:])
    return torch.cat(out)


class RankingAttack(Attack):
    """Base of RobRank's attacks: 32 PGD steps from the clean image (no random start) by default,
    RobRank's step with :data:`PROFILES`; ``score`` gives the reported number(s) of each perturbed image."""

    lowers: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ("gallery", "targets")
    #: the columns of RobRank's table this attack fills, and how each is scaled for it
    columns: ClassVar[tuple[str, ...]]

    def __init__(self, eps: float, steps: int = 32, random_init: bool = False, **kwargs):
        super().__init__(eps, steps=steps, random_init=random_init, **kwargs)

    def prepare(self, model, x, context):
        state = {"database": context.gallery.to(x.device, torch.float32)}
        if context.targets is not None:
            state["targets"] = context.targets.to(x.device)
            state["target"] = state["database"][state["targets"]]
        return state

    def score(self, adversarial: torch.Tensor, clean: torch.Tensor, context) -> dict[str, torch.Tensor]:
        """Per-image values of each column (B,), from the adversarial and clean embeddings (B, D)."""
        raise NotImplementedError


def _pick_random(pool: CleanPool) -> torch.Tensor:
    """A database item drawn uniformly for each image, seeded."""
    return torch.randint(len(pool.reference), (len(pool.embeddings),), generator=torch.Generator().manual_seed(pool.seed))


def _pick_nearest(pool: CleanPool) -> torch.Tensor:
    """A random one of each image's nearest 1 % of the database (itself excluded), seeded."""
    k = max(1, int(len(pool.reference) * NEAREST_FRACTION))
    nearest = _nearest_excluding_first(pool, k)
    pick = torch.randint(nearest.shape[1], (len(nearest),), generator=torch.Generator().manual_seed(pool.seed))
    return nearest[torch.arange(len(nearest)), pick]


def _recall_at_1(adversarial: torch.Tensor, context) -> torch.Tensor:
    """(B,) 100 if the nearest database item, the query's own entry masked, is of its class."""
    database = context.gallery.to(adversarial)
    dist = _masked_distances(adversarial, database, context.self_index.to(adversarial.device))
    nearest = dist.argmin(1)
    return 100 * (context.gallery_labels.to(adversarial.device)[nearest] == context.labels.to(adversarial.device)).float()


def ranking_attacks() -> tuple[str, ...]:
    """The registered ranking attacks (every :class:`RankingAttack`), in registration order: RobRank's nine."""
    return tuple(name for name, attack in ATTACKS.items() if isinstance(attack, type) and issubclass(attack, RankingAttack))


def ranking_columns(attacks=None) -> tuple[str, ...]:
    """The table's columns the ``attacks`` (default every ranking attack) fill, in their order."""
    return tuple(c for name in (attacks or ranking_attacks()) for c in ATTACKS[name].columns)


#: the ten columns RobRank's Empirical Robustness Score is defined on (its ``tools/pjswipe.py``)
ERS_COLUMNS = ("CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT")


def ers(columns: dict[str, float]) -> float:
    """RobRank's Empirical Robustness Score (its ``tools/pjswipe.py``): the mean of ten terms, each in
    0..100 and higher for a more robust model — 2·CA+, 100 − CA−, 2·QA+, 100 − QA−, 100·(1 − TMA),
    100·(2 − ES:D)/2, ES:R, LTM, GTM, GTT (CA/QA as percentiles, TMA a cosine, ES:D in 0..2, the rest
    as percentages)."""
    c = columns
    terms = [2 * c["CA+"], 100 - c["CA-"], 2 * c["QA+"], 100 - c["QA-"], 100 * (1 - c["TMA"]),
             100 * (2 - c["ES:D"]) / 2, c["ES:R"], c["LTM"], c["GTM"], c["GTT"]]
    return float(np.mean(terms))
