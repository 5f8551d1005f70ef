"""RobRank's adversarial ranking attacks (Zhou et al., "Adversarial Ranking Attack and Defense",
ECCV 2020, extended in arXiv 2106.03614), with its semantics: what is perturbed, the target, the
objective and the number reported.

The database is the clean embeddings of the whole test set (``context.gallery``), never perturbed.
Distances are Euclidean between unit embeddings (RobRank's ``N`` metric). Each test image is
perturbed in the role the attack gives it — a candidate (``ca+``, ``ca-``) or a query (the rest) —
toward or away from a target chosen once from clean distances (:meth:`Attack.plan`, seeded):

================ ============================================ ======================================
attack           target                                       reported (``score``)
================ ============================================ ======================================
``ca+`` (W = 1)  a query drawn uniformly from the database    percentile rank of the candidate in the
                                                              query's list (0 = top)
``ca-``          a query among the candidate's nearest 1 %    the same
``qa+`` (M = 1)  a candidate drawn uniformly                  percentile rank of it in the query's list
``qa-``          a candidate among the query's nearest 1 %    the same
``tma``          a random database item                       cosine to it
``es``           none (maximise the embedding's move)         ``ES:D`` the move, ``ES:R`` Recall@1
``ltm``          none (every other class nearer than any      Recall@1
                 same-class item)
``gtm``          the nearest item whose class differs from    Recall@1
                 the current top-1's
``gtt``          the current top-1                            retain@4: the top-1 still in the top 4
================ ============================================ ======================================

Recall@1 masks the query's own database entry. Profiles (:data:`PROFILES`): ``rob28`` (L∞ eps
77/255, step 3/255, 32 PGD steps, no random start) and ``rob224`` (eps 8/255).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..registry import flag
from .base import Attack, CleanPool
from .registry import register_attack

#: RobRank's attack profiles: PGD, signed gradient, no random start.
PROFILES = {
    "rob28": {"eps": 77 / 255, "step_size": 3 / 255, "steps": 32},
    "rob224": {"eps": 8 / 255, "step_size": 3 / 255, "steps": 32},
}
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


class _CandidateAttack(RankingAttack):
    """The image is a candidate; its target a query q. Objective (maximised): minus RobRank's
    ``mean_x relu(±(d(c, q) - d(x, q)))`` over the database x."""

    sign: ClassVar[float]

    def prepare(self, model, x, context):
        state = super().prepare(model, x, context)
        state["reference"] = unit_distance(state["target"], state["database"])  # (B, N): d(x, q)
        return state

    def objective(self, embeddings, state):
        own = (embeddings - state["target"]).norm(dim=1, keepdim=True)  # d(c, q)
        return -(self.sign * (own - state["reference"])).clamp_min(0).mean(1)

    def score(self, adversarial, clean, context):
        database = context.gallery.to(adversarial)
        target = database[context.targets.to(adversarial.device)]
        own = (adversarial - target).norm(dim=1, keepdim=True)
        # RobRank's percentile rank: the share of the database nearer to q than the candidate
        return {self.columns[0]: 100 * (own > unit_distance(target, database)).float().mean(1)}


@register_attack
class CandidateAttackUp(_CandidateAttack):
    name = "ca+"
    columns = ("CA+",)
    sign = 1.0

    def plan(self, pool: CleanPool) -> torch.Tensor:
        return _pick_random(pool)


@register_attack
class CandidateAttackDown(_CandidateAttack):
    name = "ca-"
    columns = ("CA-",)
    sign = -1.0

    def plan(self, pool: CleanPool) -> torch.Tensor:
        return _pick_nearest(pool)


def _pick_random(pool: CleanPool) -> torch.Tensor:
    """A database item drawn uniformly for each image, seeded."""
    return torch.randint(len(pool.reference), (len(pool.embeddings),), generator=torch.Generator().manual_seed(pool.seed))


def _pick_nearest(pool: CleanPool) -> torch.Tensor:
    """A random one of each image's nearest 1 % of the database (itself excluded), seeded."""
    k = max(1, int(len(pool.reference) * NEAREST_FRACTION))
    nearest = _nearest_excluding_first(pool, k)
    pick = torch.randint(nearest.shape[1], (len(nearest),), generator=torch.Generator().manual_seed(pool.seed))
    return nearest[torch.arange(len(nearest)), pick]


class _QueryAttack(RankingAttack):
    """The image is a query; its target a candidate c. Objective: minus RobRank's
    ``mean_x relu(±(d(q, c) - d(q, x)))`` over the database x."""

    sign: ClassVar[float]

    def objective(self, embeddings, state):
        to_target = (embeddings - state["target"]).norm(dim=1, keepdim=True)
        to_all = unit_distance(embeddings, state["database"])
        return -(self.sign * (to_target - to_all)).clamp_min(0).mean(1)

    def score(self, adversarial, clean, context):
        database = context.gallery.to(adversarial)
        to_all = unit_distance(adversarial, database)
        to_target = to_all.gather(1, context.targets.to(adversarial.device)[:, None])
        # the target's position in the query's list (0 = top), as a percentile
        return {self.columns[0]: 100 * (to_all < to_target).float().mean(1)}


@register_attack
class QueryAttackUp(_QueryAttack):
    name = "qa+"
    columns = ("QA+",)
    sign = 1.0

    def plan(self, pool: CleanPool) -> torch.Tensor:
        return _pick_random(pool)


@register_attack
class QueryAttackDown(_QueryAttack):
    name = "qa-"
    columns = ("QA-",)
    sign = -1.0

    def plan(self, pool: CleanPool) -> torch.Tensor:
        return _pick_nearest(pool)


@register_attack
class TargetedMismatch(RankingAttack):
    """TMA: move the query's embedding onto a random database item's (maximise their cosine)."""

    name = "tma"
    columns = ("TMA",)

    def plan(self, pool: CleanPool) -> torch.Tensor:
        return _pick_random(pool)

    def objective(self, embeddings, state):
        return (embeddings * state["target"]).sum(1)

    def score(self, adversarial, clean, context):
        target = context.gallery.to(adversarial)[context.targets.to(adversarial.device)]
        return {"TMA": (adversarial * target).sum(1)}


def _recall_at_1(adversarial: torch.Tensor, context) -> torch.Tensor:
    """(B,) 100 if the nearest database item, the query's own entry masked, is of its class."""
    database = context.gallery.to(adversarial)
    dist = _masked_distances(adversarial, database, context.self_index.to(adversarial.device))
    nearest = dist.argmin(1)
    return 100 * (context.gallery_labels.to(adversarial.device)[nearest] == context.labels.to(adversarial.device)).float()


@register_attack
class EmbeddingShift(RankingAttack):
    """ES: maximise the embedding's move ``||f(q') - f(q)||`` (a 1e-7 offset keeps the first gradient
    defined, as RobRank's); reported as ES:D (the move) and ES:R (Recall@1 after it).

    At q' = q the objective's gradient points along the offset alone, so the first step of every
    query ascends one fixed embedding direction (here minus the all-ones vector).

    Args:
        robrank_compat: the objective as RobRank's metric-N code computes it, torch's
            ``pairwise_distance``, whose +1e-6 outweighs the offset: the first step ascends the
            all-ones direction instead, the direction RobRank's EST training adversary starts in
            (``est`` with ``robrank_compat``). For reproducing its numbers.
    """

    name = "es"
    columns = ("ES:D", "ES:R")
    needs = ("gallery", "gallery_labels", "labels", "self_index")

    def __init__(self, *args, robrank_compat: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.robrank_compat = flag(f"{self.name}.robrank_compat", robrank_compat)

    def prepare(self, model, x, context):
        return {"clean": model(x) + 1e-7}

    def objective(self, embeddings, state):
        if self.robrank_compat:
            return torch.nn.functional.pairwise_distance(embeddings, state["clean"])
        return (embeddings - state["clean"]).norm(dim=1)

    def score(self, adversarial, clean, context):
        return {"ES:D": (adversarial - clean).norm(dim=1), "ES:R": _recall_at_1(adversarial, context)}


@register_attack
class LabelTargetedMismatch(RankingAttack):
    """LTM: minus ``relu(max d to other-class items - min d to same-class items)``, the query's own
    entry excluded: every other class nearer than its own; reported as Recall@1."""

    name = "ltm"
    columns = ("LTM",)
    needs = ("gallery", "gallery_labels", "labels", "self_index")

    def prepare(self, model, x, context):
        database = context.gallery.to(x.device, torch.float32)
        same = context.labels.to(x.device)[:, None] == context.gallery_labels.to(x.device)[None, :]
        own = torch.zeros_like(same)
        index = context.self_index.to(x.device)
        rows = torch.nonzero(index >= 0).squeeze(1)
        own[rows, index[rows]] = True
        return {"database": database, "same": same & ~own, "other": ~same}

    def objective(self, embeddings, state):
        dist = unit_distance(embeddings, state["database"])
        farthest_other = dist.masked_fill(~state["other"], -torch.inf).amax(1)
        nearest_same = dist.masked_fill(~state["same"], torch.inf).amin(1)
        gap = farthest_other - nearest_same
        return -torch.where(torch.isfinite(gap), gap, torch.zeros_like(gap)).clamp_min(0)

    def score(self, adversarial, clean, context):
        return {"LTM": _recall_at_1(adversarial, context)}


@register_attack
class GuidedTopMismatch(RankingAttack):
    """GTM: move the query onto the nearest database item whose class differs from its current
    top-1's (the query's own entry excluded); reported as Recall@1.

    Args:
        robrank_compat: pick the target as RobRank's code does: it takes the position of the nearest
            item *within* the subset of other-class items and uses it as a position in the whole
            database, so its target is effectively an arbitrary item. For reproducing its numbers.
    """

    name = "gtm"
    columns = ("GTM",)
    needs = ("gallery", "gallery_labels", "labels", "self_index", "targets")

    def __init__(self, *args, robrank_compat: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.robrank_compat = flag(f"{self.name}.robrank_compat", robrank_compat)

    def plan(self, pool: CleanPool) -> torch.Tensor:
        own = pool.own_positions()
        targets = []
        for lo, hi in _chunks(len(pool.embeddings)):
            dist = _masked_distances(pool.embeddings[lo:hi], pool.reference, own[lo:hi])
            top_label = pool.reference_labels[dist.argmin(1)]
            other = pool.reference_labels[None, :] != top_label[:, None]
            if self.robrank_compat:
                for row in range(hi - lo):
                    subset = torch.nonzero(other[row]).squeeze(1)
                    targets.append(int(dist[row, subset].argmin()))  # a subset position used globally
            else:
                targets.extend(dist.masked_fill(~other, torch.inf).argmin(1).tolist())
        return torch.as_tensor(targets, dtype=torch.long)

    def objective(self, embeddings, state):
        return -(embeddings - state["target"]).norm(dim=1)

    def score(self, adversarial, clean, context):
        return {"GTM": _recall_at_1(adversarial, context)}


@register_attack
class GuidedTopTranslocation(RankingAttack):
    """GTT: push the query's current top-1 (its own entry excluded) down its list (``qa-`` on it);
    reported as retain@4 — the top-1 still among the 4 nearest."""

    name = "gtt"
    columns = ("GTT",)
    needs = ("gallery", "self_index", "targets")

    def plan(self, pool: CleanPool) -> torch.Tensor:
        own = pool.own_positions()
        return torch.cat([_masked_distances(pool.embeddings[lo:hi], pool.reference, own[lo:hi]).argmin(1)
                          for lo, hi in _chunks(len(pool.embeddings))])

    def objective(self, embeddings, state):
        to_target = (embeddings - state["target"]).norm(dim=1, keepdim=True)
        to_all = unit_distance(embeddings, state["database"])
        return -(to_all - to_target).clamp_min(0).mean(1)

    def score(self, adversarial, clean, context):
        database = context.gallery.to(adversarial)
        dist = _masked_distances(adversarial, database, context.self_index.to(adversarial.device))
        top = dist.topk(min(RETAIN_K, dist.shape[1]), dim=1, largest=False).indices
        return {"GTT": 100 * (top == context.targets.to(adversarial.device)[:, None]).any(1).float()}


RANKING_ATTACKS = ("ca+", "ca-", "qa+", "qa-", "tma", "es", "ltm", "gtm", "gtt")
COLUMNS = ("CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT")


def ers(columns: dict[str, float]) -> float:
    """RobRank's Empirical Robustness Score (its ``tools/pjswipe.py``): the mean of ten terms, each in
    0..100 and higher for a more robust model — 2·CA+, 100 − CA−, 2·QA+, 100 − QA−, 100·(1 − TMA),
    100·(2 − ES:D)/2, ES:R, LTM, GTM, GTT (CA/QA as percentiles, TMA a cosine, ES:D in 0..2, the rest
    as percentages)."""
    c = columns
    terms = [2 * c["CA+"], 100 - c["CA-"], 2 * c["QA+"], 100 - c["QA-"], 100 * (1 - c["TMA"]),
             100 * (2 - c["ES:D"]) / 2, c["ES:R"], c["LTM"], c["GTM"], c["GTT"]]
    return float(np.mean(terms))
