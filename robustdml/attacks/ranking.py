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

import torch

from ..registry import flag
from .base import CleanPool
from .ranking_base import (ERS_COLUMNS, NEAREST_FRACTION, PROFILES, RETAIN_K, RankingAttack, _chunks,  # noqa: F401
                           _masked_distances, _pick_nearest, _pick_random, _recall_at_1, ers, ranking_attacks,
                           ranking_columns, unit_distance)
from .registry import register_attack


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
