"""Attacks on deep metric learning, each an objective optimised by PGD, APGD or Square (docs/design.md,
"Attacks"), grouped by what they need:

- label-free: ``displacement`` (embedding displacement)
- clustering-aware: ``centroid`` (centroid margin against the clean k-means clustering);
  targeted: ``centroid-nearest``, ``centroid-random``, ``centroid-balanced`` (label-aware)
- feature-targeted: ``feature-nearest``, ``feature-balanced`` (label-aware)
- retrieval: ``retrieval`` (Recall@1 margin against a clean gallery)
- RobRank's ranking attacks: ``ca+``, ``ca-``, ``qa+``, ``qa-``, ``tma``, ``es``, ``ltm``, ``gtm``, ``gtt``
  (:mod:`robustdml.attacks.ranking`)
- black-box controls: ``transfer`` (from a surrogate model), ``noise`` (uniform noise, the floor)

>>> from robustdml.attacks import create_attack
>>> x_adv = create_attack("displacement", eps=8 / 255, steps=10)(model, images)
"""

from .base import Attack, project, random_start
from .context import AttackContext, Norm, ThreatModel, check_eps, format_budget, format_eps, parse_eps
from .centroid import CentroidMargin
from .displacement import EmbeddingDisplacement
from .loss import LossAttack
from .noise import UniformNoise
from .optim import ascent_step
from .registry import ATTACKS, create_attack, register_attack
from . import ranking  # noqa: F401  (registers RobRank's attacks)
from .ranking_base import ranking_attacks
from .retrieval import RetrievalAttack
from .targeted import CentroidBalanced, CentroidNearest, CentroidRandom, FeatureBalanced, FeatureNearest
from .transfer import TransferAttack

__all__ = ["Attack", "AttackContext", "ThreatModel", "Norm", "parse_eps", "check_eps", "format_eps", "format_budget", "project", "random_start", "ascent_step", "ATTACKS", "create_attack", "register_attack",
           "EmbeddingDisplacement", "LossAttack", "CentroidMargin", "RetrievalAttack", "TransferAttack", "UniformNoise",
           "CentroidNearest", "CentroidRandom", "CentroidBalanced", "FeatureNearest", "FeatureBalanced", "ranking_attacks"]
