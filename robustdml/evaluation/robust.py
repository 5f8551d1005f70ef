"""Robust evaluation: perturb every test image with each attack of the suite at each eps, embed,
cluster again, compute every metric; report the worst case per metric and the honest-evaluation
checks of DESIGN §2.

Threat model (DESIGN §1): the attacker may perturb every test image within eps. Clustering metrics
are computed on the adversarial embeddings of all test images (k-means with k = number of classes);
retrieval metrics rank adversarial queries against the clean gallery.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm.auto import tqdm

from ..attacks import ATTACKS, Attack, create_attack
from ..data import IndexedDataset
from ..errors import ConfigError
from .embed import embed
from .metrics import clustering_metrics, kmeans, retrieval_metrics

log = logging.getLogger(__name__)

TOLERANCE = 0.02  # how far a worst-case metric may move the "wrong" way before a check fails
CHECK_METRICS = ("nmi", "recall@1")


def eps_key(eps: float) -> str:
    """JSON key of an eps value: a short, exact-enough decimal ("0.1", "0.0313725")."""
    return f"{eps:.6g}"


@dataclass
class AttackSettings:
    """How the suite is run. ``step_size`` is ``step_factor * eps / steps`` (2.5 as in Madry et al.)."""

    steps: int = 10
    restarts: int = 1
    norm: str = "linf"
    step_factor: float = 2.5
    seed: int = 0
    batch_size: int = 256

    def build(self, name: str, eps: float, steps: int | None = None, restarts: int | None = None) -> Attack:
        steps = steps or self.steps
        return create_attack(name, eps, steps=steps, restarts=restarts or self.restarts, norm=self.norm,
                             step_size=self.step_factor * eps / steps if eps > 0 else None, seed=self.seed)


@dataclass
class Sample:
    """A few images of the attack with the worst NMI at the main eps, for the picture grid."""

    clean: torch.Tensor | None = None
    adversarial: torch.Tensor | None = None
    attack: str = ""
    eps: float = 0.0
    embeddings: torch.Tensor | None = None  # that attack's adversarial embeddings of the whole test pool


@dataclass
class RobustEvaluator:
    """Holds the clean state of one model on one test set and runs attacks against it.

    Example:
        >>> ev = RobustEvaluator(model, query_set, None, ks=(1, 2, 4, 8))
        >>> result = ev.run(eps_values=[0.1], attacks=["displacement", "centroid", "noise"])
    """

    model: nn.Module
    query_set: Dataset
    gallery_set: Dataset | None = None
    ks: tuple[int, ...] = (1, 2, 4, 8)
    device: torch.device | str = "cpu"
    settings: AttackSettings = field(default_factory=AttackSettings)
    surrogate: nn.Module | None = None
    kmeans_seed: int = 0
    kmeans_restarts: int = 5
    progress: bool = False
    samples: int = 8
    workers: int = 0  # data-loading processes

    def __post_init__(self):
        self.device = torch.device(self.device)
        self.pool = self.query_set if self.gallery_set is None else ConcatDataset([self.query_set, self.gallery_set])
        self.n_query = len(self.query_set)
        self.clean_emb, self.labels = embed(self.model, self.pool, self.settings.batch_size, self.device, self.workers)
        self.clusters, centroids = kmeans(self.clean_emb.numpy(), int(len(np.unique(self.labels))), seed=self.kmeans_seed,
                                          restarts=self.kmeans_restarts)
        self.centroids = torch.from_numpy(centroids)
        # Reference set of the retrieval attack and metrics: the clean gallery (or the clean pool).
        self.ref_offset = 0 if self.gallery_set is None else self.n_query
        self.reference = self.clean_emb[self.ref_offset:]
        self.reference_labels = torch.from_numpy(self.labels[self.ref_offset:])
        self.clean = self.metrics(self.clean_emb)
        self.sample = Sample()
        self._last_batch = (None, None)

    # --- metrics ---------------------------------------------------------------------------------
    def metrics(self, pool_emb: torch.Tensor) -> dict[str, float]:
        result = clustering_metrics(pool_emb.numpy(), self.labels, seed=self.kmeans_seed, restarts=self.kmeans_restarts)
        query = pool_emb[: self.n_query]
        ql = self.labels[: self.n_query]
        if self.gallery_set is None:
            result.update(retrieval_metrics(query, ql, self.clean_emb, self.labels, ks=self.ks, leave_one_out=True))
        else:
            result.update(retrieval_metrics(query, ql, self.reference, self.reference_labels.numpy(), ks=self.ks))
        return result

    # --- one attack --------------------------------------------------------------------------------
    def attack(self, attack: Attack, desc: str = "") -> tuple[dict[str, float], torch.Tensor]:
        """Perturb the whole test pool; returns (metrics, adversarial embeddings)."""
        if "surrogate" in attack.needs and self.surrogate is None:
            raise ConfigError("the transfer attack needs a surrogate model (--surrogate PATH)")
        loader = DataLoader(IndexedDataset(self.pool), batch_size=self.settings.batch_size, shuffle=False,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        adv_emb = []
        for images, labels, index in tqdm(loader, desc=desc, leave=False, disable=None if self.progress else True):
            images = images.to(self.device, non_blocking=True)
            self_index = index - self.ref_offset
            context = {"centroids": self.centroids, "assignments": torch.from_numpy(self.clusters[index.numpy()]),
                       "gallery": self.reference, "gallery_labels": self.reference_labels, "labels": labels,
                       "self_index": torch.where(self_index >= 0, self_index, torch.full_like(self_index, -1)),
                       "surrogate": self.surrogate}
            x_adv = attack(self.model, images, **{k: context[k] for k in attack.needs})
            with torch.no_grad():
                adv_emb.append(self.model(x_adv).float().cpu())
            if index[0] == 0 and self.samples:
                self._last_batch = (images[: self.samples].cpu(), x_adv[: self.samples].cpu())
        adv_emb = torch.cat(adv_emb)
        return self.metrics(adv_emb), adv_emb

    # --- the suite ---------------------------------------------------------------------------------
    def run(self, eps_values: list[float], attacks: list[str], main_eps: float | None = None,
            checks: bool = True) -> dict:
        """Every attack at every eps, the worst case per metric, and the honest-evaluation checks."""
        for name in attacks:
            if name not in ATTACKS:
                raise ConfigError(f"unknown attack '{name}'; choose from {', '.join(ATTACKS)} or all")
        if any(not e >= 0 for e in eps_values):
            raise ConfigError(f"eps values must be >= 0, got {eps_values}")
        if "transfer" in attacks and self.surrogate is None:
            log.warning("no surrogate model given: the transfer attack and its check are skipped")
            attacks = [a for a in attacks if a != "transfer"]
        if not attacks:
            raise ConfigError("no attack left to run: the transfer attack needs a surrogate model (--surrogate PATH)")
        eps_values = sorted(set(eps_values))
        main_eps = main_eps if main_eps in eps_values else eps_values[-1]
        results: dict[str, dict[str, dict]] = {name: {} for name in attacks}
        for eps in eps_values:
            for name in attacks:
                metrics, adv_emb = self.attack(self.settings.build(name, eps), desc=f"{name} eps={eps_key(eps)}")
                results[name][eps_key(eps)] = metrics
                log.info("%-12s eps=%-9s %s", name, eps_key(eps), "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if eps == main_eps and (not self.sample.attack or metrics["nmi"] < results[self.sample.attack][eps_key(eps)]["nmi"]):
                    self.sample = Sample(*self._last_batch, attack=name, eps=eps, embeddings=adv_emb)
        worst, worst_attack = worst_case(results, [eps_key(e) for e in eps_values])
        out = {"clean": self.clean, "attacks": results, "worst": worst, "worst_attack": worst_attack,
               "settings": {**asdict(self.settings), "eps": eps_values, "main_eps": main_eps, "attacks": attacks}}
        if checks:
            out["checks"] = self.checks(results, worst, eps_values, main_eps, attacks)
        return out

    def checks(self, results, worst, eps_values, main_eps, attacks) -> dict:
        white = [a for a in attacks if ATTACKS[a].white_box]
        checks = {}
        # 1. Every white-box attack does more damage than uniform noise of the same eps, on the
        #    metric it is built to lower (clustering attacks: NMI; the retrieval attack: R@1).
        if "noise" in attacks and white:
            failures, details = [], {}
            for eps in eps_values:
                k = eps_key(eps)
                noise = results["noise"][k]
                for a in white:
                    m = results[a][k]
                    details.setdefault(k, {})[a] = {c: m[c] for c in CHECK_METRICS}
                    if eps > 0 and not all(m[c] < noise[c] for c in ATTACKS[a].targets):
                        failures.append(f"{a}@{k}")
                details[k]["noise"] = {c: noise[c] for c in CHECK_METRICS}
            checks["beats_noise"] = {"passed": not failures, "failures": failures, "figures": details,
                                     "rule": "each white-box attack lowers its target metric (NMI for clustering "
                                             "attacks, R@1 for the retrieval attack) below uniform noise's"}
        # 2. The worst case does not rise with eps.
        if len(eps_values) > 1:
            rises = {}
            for metric in self.clean:
                series = [worst[eps_key(e)][metric] for e in eps_values]
                rises[metric] = max(0.0, max(b - max(series[:i + 1]) for i, b in enumerate(series)))
            checks["monotone_in_eps"] = {"passed": all(r <= TOLERANCE for r in rises.values()), "max_rise": rises,
                                         "tolerance": TOLERANCE}
        else:
            checks["monotone_in_eps"] = {"passed": None, "note": "needs at least two eps values"}
        # 3. More steps, more restarts: the worst case must not rise (a rise means the attack is unstable).
        if white:
            base = worst[eps_key(main_eps)]
            s = self.settings
            for check, kwargs in (("more_steps", {"steps": 2 * s.steps}), ("more_restarts", {"restarts": s.restarts + 1})):
                stronger = {a: self.attack(s.build(a, main_eps, **kwargs), desc=f"{check} {a}")[0] for a in white}
                again, _ = worst_case({a: {"x": m} for a, m in stronger.items()}, ["x"])
                delta = {m: again["x"][m] - base[m] for m in base}
                checks[check] = {"passed": all(d <= TOLERANCE for d in delta.values()), "eps": main_eps, **kwargs,
                                 "worst": again["x"], "change": delta, "tolerance": TOLERANCE,
                                 "rule": "worst case with the stronger attack minus the suite's worst case <= tolerance"}
        # 4. A transfer attack is not much stronger than the white-box worst case (gradient masking).
        if "transfer" in attacks and white:
            gaps = {}
            for eps in eps_values:
                k = eps_key(eps)
                white_worst = {c: min(results[a][k][c] for a in white) for c in CHECK_METRICS}
                gaps[k] = {c: white_worst[c] - results["transfer"][k][c] for c in CHECK_METRICS}
            checks["transfer_not_stronger"] = {
                "passed": all(g <= TOLERANCE for d in gaps.values() for g in d.values()), "gap": gaps,
                "tolerance": TOLERANCE, "rule": "white-box worst minus transfer <= tolerance"}
        else:
            checks["transfer_not_stronger"] = {"passed": None, "note": "no surrogate model given (--surrogate)"}
        return checks


def worst_case(results: dict[str, dict[str, dict]], keys: list[str]) -> tuple[dict, dict]:
    """Per eps key and metric: the lowest value over attacks, and which attack gave it."""
    worst, which = {}, {}
    for k in keys:
        worst[k], which[k] = {}, {}
        for name, per_eps in results.items():
            for metric, value in per_eps[k].items():
                if metric not in worst[k] or value < worst[k][metric]:
                    worst[k][metric], which[k][metric] = value, name
    return worst, which
