"""Robust evaluation: perturb every test image with each attack of a suite at each eps, embed,
cluster again, compute every metric; report the worst case per metric and the honest-evaluation checks.

One entry point, :func:`evaluate_robustness`, serves the ``attack`` command, the benchmark and the
robust validation during training; they only format its :class:`RobustResult`.

Threat model (docs/design.md, "Threat model"): the attacker knows the model and the true classes of
the images it perturbs, and may perturb every test image within eps. Clustering metrics are
computed on the adversarial embeddings of all test images (k-means with k = number of classes);
retrieval metrics rank adversarial queries against the clean gallery.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm.auto import tqdm

from ..attacks import ATTACKS, Attack, AttackContext, ThreatModel, check_eps, parse_eps
from ..attacks.base import CleanPool
from ..data import IndexedDataset
from ..errors import ConfigError
from ..models import EnsembleNet
from ..models.modes import eval_mode
from . import checks as honest
from . import combine
from .embed import embed
from .metrics import clustering_metrics, kmeans, metric_names, retrieval_metrics, worse
from .results import schema
from .suite import AttackSpec, AttackSuite

log = logging.getLogger(__name__)

COMBOS = ("combo-margin", "combo-spread", "combo-retrieval")


def eps_key(eps: float) -> str:
    """JSON key of an eps value: a short, exact-enough decimal ("0.1", "0.0313725")."""
    return f"{eps:.6g}"


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
    """Everything one robust evaluation found. ``attacks``: label -> eps key -> metric -> value;
    ``worst``/``worst_attack``: eps key -> metric -> the worst value / the label that gave it;
    ``convergence``: label -> {"iterations": [...], metric: [...]} for the attacks rerun with more
    iterations by the checks."""

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
    convergence: dict = field(default_factory=dict)
    seconds: float = 0.0
    about: dict = field(default_factory=dict)  # what was evaluated: dataset, test images, model (saved beside)

    def to_dict(self) -> dict:
        """The JSON form: numbers only, no tensors."""
        return {"schema": schema("robust"), "clean": self.clean, "attacks": self.attacks, "worst": self.worst,
                "worst_attack": self.worst_attack, "settings": self.settings, "checks": self.checks,
                "convergence": self.convergence, "seconds": round(self.seconds, 1)}

    @classmethod
    def from_dict(cls, data: dict) -> "RobustResult":
        """A result read back from its JSON form (no embeddings or images: tables and plots, not t-SNE)."""
        own = ("schema", "clean", "attacks", "worst", "worst_attack", "settings", "checks", "convergence", "seconds")
        return cls(data["clean"], data["attacks"], data["worst"], data["worst_attack"], data["checks"],
                   data["settings"], float(data["settings"]["main_eps"]), Sample(), torch.zeros(0, 0),
                   np.zeros(0, dtype=np.int64), data.get("convergence", {}), float(data.get("seconds", 0.0)),
                   {k: v for k, v in data.items() if k not in own})

    @property
    def test_images(self) -> int:
        return int(self.about.get("test_images", len(self.labels)))

    def table(self) -> str:
        """The metrics table under the suite's line, upper bounds marked, and the checks' states."""
        from ..reporting.robust import robust_summary
        return robust_summary(self)

    def plot(self, directory) -> list:
        """Metrics against eps, the worst attack's adversarial examples and the convergence curves, as PNGs."""
        from ..reporting.robust import robust_plots
        return robust_plots(self, directory)

    def save(self, path) -> None:
        """The JSON form and what was evaluated (``about``), written atomically."""
        from ..files import write_json
        write_json(path, {**self.to_dict(), **self.about})


class _TestPool:
    """The clean state of one model on one test set (embeddings, clustering, gallery) and the runs
    of single attacks against it."""

    def __init__(self, model: nn.Module, query_set: Dataset, gallery_set: Dataset | None, ks, device, batch_size: int,
                 kmeans_seed: int, kmeans_restarts: int, surrogate: nn.Module | None, workers: int, progress: bool,
                 seed: int = 0):
        self.model, self.ks, self.device, self.batch_size = model, ks, torch.device(device), batch_size
        self.kmeans_seed, self.kmeans_restarts = kmeans_seed, kmeans_restarts
        self.surrogate, self.workers, self.progress = surrogate, workers, progress
        self.query_set, self.gallery_set = query_set, gallery_set
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
        self.clean_pool = CleanPool(self.clean_emb, torch.from_numpy(self.labels), torch.from_numpy(self.clusters),
                                    self.centroids, self.reference, self.reference_labels, self.ref_offset, seed)
        self.clean = self.metrics(self.clean_emb)
        self._plans: dict[str, torch.Tensor | None] = {}

    def metrics(self, pool_emb: torch.Tensor) -> dict[str, float]:
        result = clustering_metrics(pool_emb.numpy(), self.labels, seed=self.kmeans_seed, restarts=self.kmeans_restarts)
        query, query_labels = pool_emb[: self.n_query], self.labels[: self.n_query]
        result.update(retrieval_metrics(query, query_labels, self.reference, self.reference_labels.numpy(), ks=self.ks,
                                        leave_one_out=not self.has_gallery))
        return result

    def self_index(self, index: torch.Tensor) -> torch.Tensor:
        """Each pool position's own gallery position, or -1."""
        own = index - self.ref_offset
        return torch.where(own >= 0, own, torch.full_like(own, -1))

    def plan(self, attack: Attack) -> torch.Tensor | None:
        """The attack's per-sample targets for the whole pool, computed once per attack class."""
        name = type(attack).__name__
        if name not in self._plans:
            self._plans[name] = attack.plan(self.clean_pool)
        return self._plans[name]

    def context(self, labels: torch.Tensor, index: torch.Tensor, targets: torch.Tensor | None) -> AttackContext:
        """The one place an attack's per-batch context is built."""
        return AttackContext(labels=labels, centroids=self.centroids,
                             assignments=torch.from_numpy(self.clusters[index.numpy()]),
                             gallery=self.reference, gallery_labels=self.reference_labels,
                             self_index=self.self_index(index), surrogate=self.surrogate,
                             targets=None if targets is None else targets[index])

    def attack(self, attack: Attack, desc: str = "", samples: int = 0, victim: nn.Module | None = None,
               trace_at: tuple[int, ...] = ()):
        """Perturb the whole pool with ``attack`` crafted on this pool's model; ``victim`` (default:
        that model) embeds the result. Returns (adversarial embeddings, (clean, adversarial) first
        images, {iteration: embeddings} at ``trace_at``)."""
        victim = victim or self.model
        targets = self.plan(attack)
        loader = DataLoader(IndexedDataset(self.pool), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        adv_emb, first, traced = [], (None, None), {i: [] for i in trace_at}
        for images, labels, index in tqdm(loader, desc=desc, leave=False, disable=None if self.progress else True):
            images = images.to(self.device, non_blocking=True)
            attack.trace = _tracer(victim, images, traced) if trace_at else None
            x_adv = attack(self.model, images, self.context(labels, index, targets))
            with torch.no_grad():
                adv_emb.append(victim(x_adv).float().cpu())
            if index[0] == 0 and samples:
                first = (images[:samples].cpu(), x_adv[:samples].cpu())
        attack.trace = None
        return torch.cat(adv_emb), first, {i: torch.cat(e) for i, e in traced.items() if e}


def _tracer(victim: nn.Module, images: torch.Tensor, traced: dict):
    def record(iteration: int, delta: torch.Tensor) -> None:
        if iteration in traced:
            with torch.no_grad():
                traced[iteration].append(victim(images + delta).float().cpu())
    return record


@dataclass
class _Outcome:
    """One attack (or combination) at one eps: its metrics and adversarial embeddings of the pool."""

    metrics: dict[str, float]
    embeddings: torch.Tensor
    first: tuple = (None, None)
    curve: dict = field(default_factory=dict)


class _SuiteRun:
    """Runs a suite's entries against one model: single attacks, the ensemble variants, the
    clustering-level combinations."""

    def __init__(self, pool: _TestPool, suite: AttackSuite, threat: ThreatModel, specs: list[AttackSpec],
                 samples: int):
        self.pool, self.suite, self.threat, self.samples = pool, suite, threat, samples
        self.specs = {s.label: s for s in specs}
        self.members: list[_TestPool] = []
        model = pool.model
        if isinstance(model, EnsembleNet):
            for label in suite.ensemble_reweighted:
                spec = self.specs[label]
                self.specs[f"{label}-reweighted"] = AttackSpec(f"{label}-reweighted", spec.attack,
                                                               {**spec.options, "reweight_members": True})
            if suite.member_transfer:
                self.members = [_TestPool(m, pool.query_set, pool.gallery_set, pool.ks, pool.device, pool.batch_size,
                                          pool.kmeans_seed, pool.kmeans_restarts, None, pool.workers, False,
                                          pool.clean_pool.seed) for m in model.members]
            for i in range(len(self.members)):
                for label in suite.member_transfer:
                    self.specs[f"member{i}:{label}"] = self.specs[label]

    def strongest(self, results: dict, eps: float) -> list[str]:
        """The gradient entries individually worst for the defender at ``eps``, one per metric of the checks."""
        gradient = [a for a in self.gradient_labels() if eps_key(eps) in results.get(a, {})]
        if not gradient:
            return []
        at_eps = {a: results[a][eps_key(eps)] for a in gradient}
        return list(dict.fromkeys(_strongest(gradient, at_eps, m) for m in metric_names("check")))

    def gradient_labels(self) -> list[str]:
        """White-box entries that follow the target's gradients (not Square, noise, transfers)."""
        return [label for label, spec in self.specs.items() if not label.startswith("member")
                and ATTACKS[spec.attack].white_box and spec.optimizer != "square"]

    def run(self, label: str, eps: float, steps_scale: int = 1, extra_restarts: int = 0,
            trace_at: tuple[int, ...] = ()) -> _Outcome:
        spec = self.specs[label]
        attack = self.suite.build(spec, eps, self.threat, steps_scale=steps_scale, extra_restarts=extra_restarts)
        desc = f"{label} eps={eps_key(eps)}"
        if label.startswith("member"):
            member = self.members[int(label[len("member"):label.index(":")])]
            emb, first, traced = member.attack(attack, desc, victim=self.pool.model, trace_at=trace_at)
        else:
            emb, first, traced = self.pool.attack(attack, desc, self.samples, trace_at=trace_at)
        return _Outcome(self.pool.metrics(emb), emb, first, {i: self.pool.metrics(e) for i, e in traced.items()})

    def at_eps(self, eps: float, labels: list[str] | None = None) -> dict[str, _Outcome]:
        """Every entry (or those in ``labels``) at ``eps``, then the combinations of their candidates."""
        outcomes = {}
        for label in labels or self.specs:
            outcomes[label] = self.run(label, eps)
            log.info("%-28s eps=%-9s %s", label, eps_key(eps),
                     "  ".join(f"{k} {v:.4f}" for k, v in outcomes[label].metrics.items()))
        outcomes.update(self.combinations(outcomes))
        return outcomes

    def combinations(self, outcomes: dict[str, _Outcome]) -> dict[str, _Outcome]:
        if not self.suite.combine:
            return {}
        pool = self.pool
        labels = [label for label in outcomes if label not in COMBOS]
        candidates = torch.stack([outcomes[label].embeddings for label in labels])
        clusters, truth = torch.from_numpy(pool.clusters), torch.from_numpy(pool.labels)
        choices = {
            "combo-margin": combine.margin_choice(candidates, pool.centroids, clusters),
            "combo-spread": combine.spread_choice(candidates, pool.centroids, clusters, truth),
            "combo-retrieval": combine.retrieval_choice(
                candidates, pool.n_query, pool.reference, pool.reference_labels, truth,
                pool.self_index(torch.arange(len(truth))), pool.centroids, clusters),
        }
        combined = {}
        for name, choice in choices.items():
            emb = combine.pick(candidates, choice)
            combined[name] = _Outcome(pool.metrics(emb), emb)
        return combined


def evaluate_robustness(model: nn.Module, query_set: Dataset, gallery_set: Dataset | None = None,
                        suite: AttackSuite | None = None, *, threat: ThreatModel | float | str, ks=(1, 2, 4, 8),
                        device: str | torch.device = "cpu", surrogate: nn.Module | None = None, kmeans_seed: int = 0,
                        kmeans_restarts: int = 5, checks: bool | None = None, samples: int = 8, workers: int = 0,
                        progress: bool = False) -> RobustResult:
    """Every attack of ``suite`` (default: ``strong``) at every eps on the whole test set, the worst
    case per metric and the honest-evaluation checks (``checks``: default the suite's).

    Args:
        query_set, gallery_set: the test sets (``gallery_set=None``: leave-one-out retrieval in the query set).
        threat: the dataset's threat model (default eps and norm, the main eps of the report), or
            its L∞ eps (``0.1``, ``"8/255"``).
        surrogate: a separate model for the transfer attack (without it, transfer is skipped).
        samples: images kept for the picture of the attack with the worst NMI at the main eps.

    Example:
        >>> result = evaluate_robustness(model, query, None, AttackSuite("strong"), threat=ThreatModel(0.1))
        >>> result.worst["0.1"]["nmi"]
    """
    start = time.time()
    suite = suite or AttackSuite("strong")
    if not isinstance(threat, ThreatModel):
        threat = ThreatModel(check_eps(parse_eps(threat, "threat")))
    specs = suite.specs()
    if surrogate is None and any(s.attack == "transfer" for s in specs):
        log.warning("no surrogate model given: the transfer attack and its check are skipped")
        specs = [s for s in specs if s.attack != "transfer"]
    if not specs:
        raise ConfigError("no attack left to run: the transfer attack needs a surrogate model (--surrogate PATH)")
    with eval_mode(model, surrogate):  # evaluation never changes the model: no BatchNorm update, mode given back
        eps_values, main_eps = suite.eps_values(threat), suite.main_eps(threat)
        pool = _TestPool(model, query_set, gallery_set, ks, device, suite.batch_size, kmeans_seed, kmeans_restarts,
                         surrogate, workers, progress, suite.seed)
        run = _SuiteRun(pool, suite, threat, specs, samples)
        at_main = run.at_eps(main_eps)
        results = {label: {eps_key(main_eps): o.metrics} for label, o in at_main.items()}
        strongest = run.strongest(results, main_eps)
        for eps in eps_values:
            if eps != main_eps:
                sweep = strongest + [a for a in run.specs if a == "noise"] if suite.sweep_strongest else None
                for label, outcome in run.at_eps(eps, sweep).items():
                    results[label][eps_key(eps)] = outcome.metrics
        results = {label: dict(sorted(per_eps.items(), key=lambda kv: float(kv[0]))) for label, per_eps in results.items()}
        keys = [eps_key(e) for e in eps_values]
        worst, worst_attack = worst_case(results, keys)
        settings = {**suite.to_dict(), "norm": suite.norm or threat.norm.value, "eps": eps_values, "main_eps": main_eps,
                    "attacks": list(results), "optimizers": {a: s.optimizer for a, s in run.specs.items() if a in results}}
        found, convergence = {}, {}
        if suite.checks if checks is None else checks:
            found, convergence = run_checks(run, results, worst, keys, main_eps, at_main, strongest)
    return RobustResult(pool.clean, results, worst, worst_attack, found, settings, main_eps, _sample(at_main, main_eps),
                        pool.clean_emb, pool.labels, convergence, time.time() - start)


def _sample(outcomes: dict[str, _Outcome], eps: float) -> Sample:
    """The attack (not a combination) with the worst NMI at the main eps, for the pictures and the t-SNE."""
    attacks = {label: o for label, o in outcomes.items() if label not in COMBOS}
    if not attacks:
        return Sample()
    label = min(attacks, key=lambda a: attacks[a].metrics["nmi"])
    return Sample(*attacks[label].first, attack=label, eps=eps, embeddings=attacks[label].embeddings)


def _strongest(labels: list[str], metrics_of: dict[str, dict], metric: str) -> str:
    """The label whose result is worst for the defender on ``metric``."""
    best = labels[0]
    for label in labels[1:]:
        if worse(metric, metrics_of[label][metric], metrics_of[best][metric]):
            best = label
    return best


def run_checks(run: _SuiteRun, results: dict, worst: dict, keys: list[str], main_eps: float,
               at_main: dict[str, _Outcome], key_attacks: list[str]) -> tuple[dict, dict]:
    """The honest-evaluation checks; the reruns with more iterations and restarts happen here, on the
    attacks that were individually strongest at the main eps (one per check metric), with the
    combinations recomputed from the rerun candidates. Returns (checks, convergence curves)."""
    gradient = run.gradient_labels()
    found = {}
    if "noise" in results and gradient:
        found["beats_noise"] = honest.beats_noise(
            results, keys, {a: ATTACKS[run.specs[a].attack].lowers for a in gradient})
    found["monotone_in_eps"] = honest.monotone_in_eps(worst, keys)
    convergence = {}
    if gradient:
        base = worst[eps_key(main_eps)]
        steps = run.suite.build(run.specs[key_attacks[0]], main_eps, run.threat).steps
        trace_at = tuple(sorted({max(1, steps // 4), max(1, steps // 2), steps, 2 * steps}))
        for check, options in (("more_steps", {"steps_scale": 2, "trace_at": trace_at}),
                               ("more_restarts", {"extra_restarts": 1})):
            rerun = {a: run.run(a, main_eps, **options) for a in key_attacks}
            outcomes = {**{k: v for k, v in at_main.items() if k not in COMBOS}, **rerun}
            outcomes.update(run.combinations(outcomes))
            again, _ = worst_case({a: {"x": o.metrics} for a, o in outcomes.items()}, ["x"])
            what = {"eps": main_eps, "rerun": key_attacks,
                    **({"steps": 2 * steps} if check == "more_steps" else {"restarts": run.suite.restarts + 1})}
            found[check] = honest.not_weaker_when_stronger(base, again["x"], **what)
            if check == "more_steps":
                found["converged"] = honest.converged(base, again["x"], **what)
                convergence = {a: {"iterations": list(trace_at),
                                   **{m: [o.curve[i][m] for i in trace_at if i in o.curve] for m in metric_names("check")}}
                               for a, o in rerun.items() if o.curve}
    others = [a for a in results if a in run.specs]
    for check, group in (("transfer_not_stronger", [a for a in others if run.specs[a].attack == "transfer"]),
                         ("square_not_stronger", [a for a in others if run.specs[a].optimizer == "square"]),
                         ("member_transfer_not_stronger", [a for a in others if a.startswith("member")])):
        if group or check == "transfer_not_stronger":
            found[check] = honest.not_stronger_than_white_box(results, keys, gradient, group, check,
                                                              absent=_why_nothing_to_compare(run, check))
    return found, convergence
def _why_nothing_to_compare(run: _SuiteRun, check: str) -> str:
    if check != "transfer_not_stronger":
        return "nothing to compare"
    if any(s.attack == "transfer" for s in run.suite.specs()):
        return "no surrogate model given (--surrogate)"
    return "the suite has no transfer attack"


def worst_case(results: dict[str, dict[str, dict]], keys: list[str]) -> tuple[dict, dict]:
    """Per eps key and metric: the value worst for the defender over the attacks run at that eps,
    and which attack gave it."""
    worst, which = {}, {}
    for k in keys:
        worst[k], which[k] = {}, {}
        for name, per_eps in results.items():
            for metric, value in per_eps.get(k, {}).items():
                if metric not in worst[k] or worse(metric, value, worst[k][metric]):
                    worst[k][metric], which[k][metric] = value, name
    return worst, which
