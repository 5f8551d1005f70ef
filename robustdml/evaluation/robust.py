"""Robust evaluation: perturb every test image with each attack of a suite at each eps, embed, cluster
again, compute every metric; report the worst case per metric and the honest-evaluation checks.

One entry point, :func:`evaluate_robustness`, serves the ``attack`` command, the benchmark and the
robust validation during training; they only format its :class:`RobustResult`.

Threat model (docs/design.md, "Threat model"): the attacker may perturb every test image within eps.
Clustering metrics are computed on the adversarial embeddings of all test images (k-means with
k = number of classes); retrieval metrics rank adversarial queries against the clean gallery.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm.auto import tqdm

from ..attacks import ATTACKS, Attack, AttackContext, Norm, ThreatModel, create_attack
from ..data import IndexedDataset
from ..errors import ConfigError
from ..registry import check_options
from . import checks as honest
from .embed import embed
from .metrics import clustering_metrics, kmeans, retrieval_metrics, worse

log = logging.getLogger(__name__)


def eps_key(eps: float) -> str:
    """JSON key of an eps value: a short, exact-enough decimal ("0.1", "0.0313725")."""
    return f"{eps:.6g}"


@dataclass
class AttackSuite:
    """Which attacks run, at which budgets, with which settings.

    Args:
        attacks: attack names, or ``"all"`` (every registered attack).
        eps: budgets in [0, 1] pixel units; ``None``: the threat model's eps.
        steps, restarts: PGD steps and random restarts of every attack (default 10, 1).
        norm: ``"linf"`` or ``"l2"``; ``None``: the threat model's norm.
        step_factor: step size = ``step_factor * eps / steps`` (2.5 as in Madry et al.).
        seed: seed of the random starts.
        batch_size: images perturbed at once.
        attack_kwargs: attack name -> options of its own constructor, e.g. ``{"centroid": {...}}``.

    Example:
        >>> suite = AttackSuite(["displacement", "centroid", "noise"], eps=[0.05, 0.1], steps=10)
    """

    attacks: list[str] | str = "all"
    eps: list[float] | None = None
    steps: int = 10
    restarts: int = 1
    norm: str | None = None
    step_factor: float = 2.5
    seed: int = 0
    batch_size: int = 256
    attack_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        names = self.names()
        if not names:
            raise ConfigError("the attack suite is empty: name at least one attack, or all")
        for name in names:
            ATTACKS.lookup(name)
        if self.eps is not None and (not self.eps or any(not e >= 0 for e in self.eps)):
            raise ConfigError(f"eps values must be >= 0 (at least one), got {self.eps}")
        for key, value in (("steps", self.steps), ("restarts", self.restarts), ("batch_size", self.batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a whole number >= 1, got {value!r}")
        if self.norm is not None and self.norm not in {n.value for n in Norm}:
            raise ConfigError(f"norm must be one of {', '.join(n.value for n in Norm)}, not {self.norm!r}")
        if not isinstance(self.attack_kwargs, dict):
            raise ConfigError("attack_kwargs must map attack names to their options")
        for name, options in self.attack_kwargs.items():
            if not isinstance(options, dict):
                raise ConfigError(f"attack_kwargs.{name} must be a mapping of options")
            check_options(ATTACKS.lookup(name), options, f"attack '{name}'")

    @classmethod
    def from_dict(cls, data: dict, **defaults) -> "AttackSuite":
        """From a config section (``attacks``, ``eps``, ``steps``, ...); ``defaults`` fill what it leaves out."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"attack section: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        merged = {**defaults, **data}
        if merged.get("eps") is not None:
            merged["eps"] = [float(e) for e in merged["eps"]]
        return cls(**merged)

    def names(self) -> list[str]:
        if self.attacks == "all" or (isinstance(self.attacks, list) and "all" in self.attacks):
            return list(ATTACKS)
        if isinstance(self.attacks, str):
            return [self.attacks]
        return list(dict.fromkeys(self.attacks))

    def eps_values(self, threat: ThreatModel) -> list[float]:
        return sorted(set(self.eps)) if self.eps is not None else [threat.eps]

    def main_eps(self, threat: ThreatModel) -> float:
        """The eps the worst case is reported at: the threat model's, else the largest of the suite."""
        values = self.eps_values(threat)
        return threat.eps if threat.eps in values else values[-1]

    def build(self, name: str, eps: float, threat: ThreatModel, steps: int | None = None,
              restarts: int | None = None) -> Attack:
        steps = steps or self.steps
        return create_attack(name, eps, steps=steps, restarts=restarts or self.restarts,
                             norm=self.norm or threat.norm, seed=self.seed,
                             step_size=self.step_factor * eps / steps if eps > 0 else None,
                             **self.attack_kwargs.get(name, {}))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sample:
    """A few images under the attack with the worst NMI at the main eps (for the picture grid), and
    that attack's adversarial embeddings of the whole test pool (for the t-SNE)."""

    clean: torch.Tensor | None = None
    adversarial: torch.Tensor | None = None
    attack: str = ""
    eps: float = 0.0
    embeddings: torch.Tensor | None = None


@dataclass
class RobustResult:
    """Everything one robust evaluation found. ``attacks``: attack -> eps key -> metric -> value;
    ``worst``/``worst_attack``: eps key -> metric -> the worst value / the attack that gave it."""

    clean: dict[str, float]
    attacks: dict[str, dict[str, dict[str, float]]]
    worst: dict[str, dict[str, float]]
    worst_attack: dict[str, dict[str, str]]
    checks: dict[str, dict]
    settings: dict
    main_eps: float
    sample: Sample
    clean_embeddings: torch.Tensor  # (N, D) of the test pool (query, then gallery)
    labels: np.ndarray              # (N,)

    def to_dict(self) -> dict:
        """The JSON form: numbers only, no tensors."""
        return {"clean": self.clean, "attacks": self.attacks, "worst": self.worst, "worst_attack": self.worst_attack,
                "settings": self.settings, "checks": self.checks}


class _TestPool:
    """The clean state of one model on one test set (embeddings, clustering, gallery) and the runs
    of single attacks against it."""

    def __init__(self, model: nn.Module, query_set: Dataset, gallery_set: Dataset | None, ks, device, batch_size: int,
                 kmeans_seed: int, kmeans_restarts: int, surrogate: nn.Module | None, workers: int, progress: bool):
        self.model, self.ks, self.device, self.batch_size = model, ks, torch.device(device), batch_size
        self.kmeans_seed, self.kmeans_restarts = kmeans_seed, kmeans_restarts
        self.surrogate, self.workers, self.progress = surrogate, workers, progress
        self.has_gallery = gallery_set is not None
        self.pool = query_set if gallery_set is None else ConcatDataset([query_set, gallery_set])
        self.n_query = len(query_set)
        self.clean_emb, self.labels = embed(model, self.pool, batch_size, self.device, workers)
        self.clusters, centroids = kmeans(self.clean_emb.numpy(), int(len(np.unique(self.labels))),
                                          seed=kmeans_seed, restarts=kmeans_restarts)
        self.centroids = torch.from_numpy(centroids)
        # Reference set of the retrieval attack and metrics: the clean gallery (or the clean pool).
        self.ref_offset = self.n_query if self.has_gallery else 0
        self.reference = self.clean_emb[self.ref_offset:]
        self.reference_labels = torch.from_numpy(self.labels[self.ref_offset:])
        self.clean = self.metrics(self.clean_emb)

    def metrics(self, pool_emb: torch.Tensor) -> dict[str, float]:
        result = clustering_metrics(pool_emb.numpy(), self.labels, seed=self.kmeans_seed, restarts=self.kmeans_restarts)
        query, query_labels = pool_emb[: self.n_query], self.labels[: self.n_query]
        result.update(retrieval_metrics(query, query_labels, self.reference, self.reference_labels.numpy(), ks=self.ks,
                                        leave_one_out=not self.has_gallery))
        return result

    def context(self, labels: torch.Tensor, index: torch.Tensor) -> AttackContext:
        """The one place an attack's per-batch context is built."""
        self_index = index - self.ref_offset
        return AttackContext(labels=labels, centroids=self.centroids,
                             assignments=torch.from_numpy(self.clusters[index.numpy()]),
                             gallery=self.reference, gallery_labels=self.reference_labels,
                             self_index=torch.where(self_index >= 0, self_index, torch.full_like(self_index, -1)),
                             surrogate=self.surrogate)

    def attack(self, attack: Attack, desc: str = "", samples: int = 0):
        """Perturb the whole pool. Returns (metrics, adversarial embeddings, (clean, adversarial) first images)."""
        loader = DataLoader(IndexedDataset(self.pool), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        adv_emb, first = [], (None, None)
        for images, labels, index in tqdm(loader, desc=desc, leave=False, disable=None if self.progress else True):
            images = images.to(self.device, non_blocking=True)
            x_adv = attack(self.model, images, self.context(labels, index))
            with torch.no_grad():
                adv_emb.append(self.model(x_adv).float().cpu())
            if index[0] == 0 and samples:
                first = (images[:samples].cpu(), x_adv[:samples].cpu())
        adv_emb = torch.cat(adv_emb)
        return self.metrics(adv_emb), adv_emb, first


def evaluate_robustness(model: nn.Module, query_set: Dataset, gallery_set: Dataset | None = None,
                        suite: AttackSuite | None = None, *, threat: ThreatModel, ks=(1, 2, 4, 8),
                        device: str | torch.device = "cpu", surrogate: nn.Module | None = None, kmeans_seed: int = 0,
                        kmeans_restarts: int = 5, checks: bool = True, samples: int = 8, workers: int = 0,
                        progress: bool = False) -> RobustResult:
    """Every attack of ``suite`` at every eps on the whole test set, the worst case per metric and
    (``checks=True``) the honest-evaluation checks.

    Args:
        query_set, gallery_set: the test sets (``gallery_set=None``: leave-one-out retrieval in the query set).
        threat: the dataset's threat model (default eps and norm, the main eps of the report).
        surrogate: a separate model for the transfer attack (without it, transfer is skipped).
        samples: images kept for the picture of the attack with the worst NMI at the main eps.

    Example:
        >>> result = evaluate_robustness(model, query, None, AttackSuite(eps=[0.1]), threat=ThreatModel(0.1))
        >>> result.worst["0.1"]["nmi"]
    """
    suite = suite or AttackSuite()
    names = suite.names()
    if "transfer" in names and surrogate is None:
        log.warning("no surrogate model given: the transfer attack and its check are skipped")
        names = [a for a in names if a != "transfer"]
    if not names:
        raise ConfigError("no attack left to run: the transfer attack needs a surrogate model (--surrogate PATH)")
    eps_values, main_eps = suite.eps_values(threat), suite.main_eps(threat)
    pool = _TestPool(model, query_set, gallery_set, ks, device, suite.batch_size, kmeans_seed, kmeans_restarts,
                     surrogate, workers, progress)
    results: dict[str, dict[str, dict]] = {name: {} for name in names}
    sample = Sample()
    for eps in eps_values:
        for name in names:
            metrics, adv_emb, first = pool.attack(suite.build(name, eps, threat), f"{name} eps={eps_key(eps)}", samples)
            results[name][eps_key(eps)] = metrics
            log.info("%-12s eps=%-9s %s", name, eps_key(eps), "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if eps == main_eps and (not sample.attack or metrics["nmi"] < results[sample.attack][eps_key(eps)]["nmi"]):
                sample = Sample(*first, attack=name, eps=eps, embeddings=adv_emb)
    keys = [eps_key(e) for e in eps_values]
    worst, worst_attack = worst_case(results, keys)
    settings = {**suite.to_dict(), "norm": suite.norm or threat.norm.value, "eps": eps_values, "main_eps": main_eps,
                "attacks": names}
    found = run_checks(pool, suite, threat, results, worst, keys, main_eps) if checks else {}
    return RobustResult(pool.clean, results, worst, worst_attack, found, settings, main_eps, sample,
                        pool.clean_emb, pool.labels)


def run_checks(pool: _TestPool, suite: AttackSuite, threat: ThreatModel, results: dict, worst: dict,
               keys: list[str], main_eps: float) -> dict:
    """The honest-evaluation checks; the stronger reruns of the white-box attacks happen here."""
    white = [a for a in results if ATTACKS[a].white_box]
    found = {}
    if "noise" in results and white:
        found["beats_noise"] = honest.beats_noise(results, keys, {a: ATTACKS[a].targets for a in white})
    found["monotone_in_eps"] = honest.monotone_in_eps(worst, keys)
    if white:
        base = worst[eps_key(main_eps)]
        for check, options in (("more_steps", {"steps": 2 * suite.steps}), ("more_restarts", {"restarts": suite.restarts + 1})):
            stronger = {a: {"x": pool.attack(suite.build(a, main_eps, threat, **options), f"{check} {a}")[0]}
                        for a in white}
            again, _ = worst_case(stronger, ["x"])
            found[check] = honest.not_weaker_when_stronger(base, again["x"], eps=main_eps, **options)
    found["transfer_not_stronger"] = honest.transfer_not_stronger(results, keys, white)
    return found


def worst_case(results: dict[str, dict[str, dict]], keys: list[str]) -> tuple[dict, dict]:
    """Per eps key and metric: the value worst for the defender over attacks, and which attack gave it."""
    worst, which = {}, {}
    for k in keys:
        worst[k], which[k] = {}, {}
        for name, per_eps in results.items():
            for metric, value in per_eps[k].items():
                if metric not in worst[k] or worse(metric, value, worst[k][metric]):
                    worst[k][metric], which[k][metric] = value, name
    return worst, which
