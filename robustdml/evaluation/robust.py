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
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..attacks import ATTACKS, ThreatModel, check_eps, parse_eps
from ..errors import ConfigError
from ..models import EnsembleNet
from ..models.modes import eval_mode
from . import combine
from .metrics import metric_names
from .results import RobustResult, Sample
from .robust_checks import run_checks
from .perturb import joined, piece
from .session import EvalSettings, EvaluationSession
from .store import EntryFiles, PartialResults, fingerprint
from .suite import AttackSpec, AttackSuite
from .worst import eps_key, strongest as _strongest, worst_case

__all__ = ["COMBOS", "RobustResult", "Sample", "SuiteRun", "eps_key", "evaluate_robustness", "worst_case"]

log = logging.getLogger(__name__)

COMBOS = ("combo-margin", "combo-spread", "combo-retrieval")


@dataclass
class _Outcome:
    """One attack (or combination) at one eps: its metrics and adversarial embeddings of the pool."""

    metrics: dict[str, float]
    embeddings: torch.Tensor
    first: tuple = (None, None)
    curve: dict = field(default_factory=dict)


class SuiteRun:
    """Runs a suite's entries against one session's model: single attacks, the ensemble variants
    (member-reweighted objectives; attacks crafted on one member, typed by ``member``) and the
    clustering-level combinations."""

    def __init__(self, session: EvaluationSession, suite: AttackSuite, threat: ThreatModel, specs: list[AttackSpec],
                 samples: int, saved: PartialResults | None = None):
        self.session, self.suite, self.threat, self.samples, self.saved = session, suite, threat, samples, saved
        self.specs = {s.label: s for s in specs}
        self.members: list[EvaluationSession] = []
        model = session.model
        if isinstance(model, EnsembleNet):
            for label in suite.ensemble_reweighted:
                spec = self.specs[label]
                self.specs[f"{label}-reweighted"] = AttackSpec(f"{label}-reweighted", spec.attack,
                                                               {**spec.options, "reweight_members": True})
            if suite.member_transfer:
                self.members = [session.for_model(m) for m in model.members]
            for i in range(len(self.members)):
                for label in suite.member_transfer:
                    spec = self.specs[label]
                    self.specs[f"member{i}:{label}"] = AttackSpec(f"member{i}:{label}", spec.attack, spec.options,
                                                                  member=i)

    def strongest(self, results: dict, eps: float) -> list[str]:
        """The gradient entries individually worst for the defender at ``eps``, one per metric of the checks."""
        gradient = [a for a in self.gradient_labels() if eps_key(eps) in results.get(a, {})]
        if not gradient:
            return []
        at_eps = {a: results[a][eps_key(eps)] for a in gradient}
        return list(dict.fromkeys(_strongest(gradient, at_eps, m) for m in metric_names("check")))

    def gradient_labels(self) -> list[str]:
        """White-box entries that follow the target's gradients (not Square, noise, transfers)."""
        return [label for label, spec in self.specs.items() if spec.member is None
                and ATTACKS[spec.attack].white_box and spec.optimizer != "square"]

    def run(self, label: str, eps: float, steps_scale: int = 1, extra_restarts: int = 0,
            trace_at: tuple[int, ...] = ()) -> _Outcome:
        spec = self.specs[label]
        attack = self.suite.build(spec, eps, self.threat, steps_scale=steps_scale, extra_restarts=extra_restarts)
        entry = self._entry(spec, attack, eps, trace_at)
        if entry is not None and (whole := entry.load()) is not None:
            emb, first, traced = joined({0: whole}, trace_at)
        else:
            crafted_on, samples = (self.members[spec.member], 0) if spec.member is not None else (self.session, self.samples)
            emb, first, traced = crafted_on.attack(attack, f"{label} eps={eps_key(eps)}", samples,
                                                   victim=self.session.model, trace_at=trace_at, saved=entry)
            if entry is not None:
                entry.save(piece(emb, first, traced))
        metrics = self.session.metrics
        return _Outcome(metrics(emb), emb, first, {i: metrics(e) for i, e in traced.items()})

    def _entry(self, spec: AttackSpec, attack, eps: float, trace_at: tuple[int, ...]) -> EntryFiles | None:
        """The files of one entry: named by everything that decides its perturbations (the built
        attack's own budget, iterations, restarts, step and seed, and the batches)."""
        if self.saved is None:
            return None
        return self.saved.entry({
            "label": spec.label, "attack": spec.attack, "options": spec.options, "member": spec.member,
            "eps": eps_key(eps), "steps": attack.steps, "restarts": attack.restarts, "step_size": attack.step_size,
            "norm": attack.norm.value, "seed": attack.seed, "batch_size": self.session.settings.batch_size,
            "samples": self.samples, "trace_at": list(trace_at)})

    def forwards(self) -> float:
        """Images this process passed through the model (or its members) while attacking."""
        return self.session.forwards + sum(m.forwards for m in self.members)

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
        s = self.session
        labels = [label for label in outcomes if label not in COMBOS]
        candidates = torch.stack([outcomes[label].embeddings for label in labels])
        clusters, truth = torch.from_numpy(s.clusters), torch.from_numpy(s.labels)
        choices = {
            "combo-margin": combine.margin_choice(candidates, s.centroids, clusters),
            "combo-spread": combine.spread_choice(candidates, s.centroids, clusters, truth),
            "combo-retrieval": combine.retrieval_choice(
                candidates, s.n_query, s.reference, s.reference_labels, truth,
                s.self_index(torch.arange(len(truth))), s.centroids, clusters),
        }
        combined = {}
        for name, choice in choices.items():
            emb = combine.pick(candidates, choice)
            combined[name] = _Outcome(s.metrics(emb), emb)
        return combined


def evaluate_robustness(model: nn.Module, query_set: Dataset | None = None, gallery_set: Dataset | None = None,
                        suite: AttackSuite | None = None, *, threat: ThreatModel | float | str, ks=(1, 2, 4, 8),
                        device: str | torch.device = "cpu", surrogate: nn.Module | None = None, kmeans_seed: int = 0,
                        kmeans_restarts: int = 5, checks: bool | None = None, samples: int = 8, workers: int = 0,
                        progress: bool = False, session: EvaluationSession | None = None,
                        partial: str | Path | None = None) -> RobustResult:
    """Every attack of ``suite`` (default: ``strong``) at every eps on the whole test set, the worst
    case per metric and the honest-evaluation checks (``checks``: default the suite's).

    Args:
        query_set, gallery_set: the test sets (``gallery_set=None``: leave-one-out retrieval in the query set).
        threat: the dataset's threat model (default eps and norm, the main eps of the report), or
            its L∞ eps (``0.1``, ``"8/255"``).
        surrogate: a separate model for the transfer attack (without it, transfer is skipped).
        samples: images kept for the picture of the attack with the worst NMI at the main eps.
        session: an :class:`EvaluationSession` already built on the model and test data (its clean
            state reused; then the data, ``ks``, ``device``, k-means and loader arguments are its own).
        partial: a folder for the finished entries and batches (:mod:`.store`): a rerun of the same
            evaluation reads them back and continues where an interrupted one stopped.

    Example:
        >>> result = evaluate_robustness(model, query, None, AttackSuite("strong"), threat=ThreatModel(0.1))
        >>> result.worst["0.1"]["nmi"]
    """
    start = time.time()
    suite = suite or AttackSuite("strong")
    if not isinstance(threat, ThreatModel):
        threat = ThreatModel(check_eps(parse_eps(threat, "threat")))
    if session is None:
        settings = EvalSettings(seed=kmeans_seed, kmeans_restarts=kmeans_restarts, batch_size=suite.batch_size,
                                ks=tuple(ks), device=device, workers=workers, progress=progress)
        session = EvaluationSession(model, query_set, gallery_set, settings, surrogate, plan_seed=suite.seed)
    else:
        session = session.sharing(surrogate, plan_seed=suite.seed)
    specs = _runnable(suite.specs(), session.surrogate)
    with eval_mode(session.model, session.surrogate):  # evaluation never changes the model: mode given back
        saved = None if partial is None else PartialResults(partial, fingerprint(session, suite, threat),
                                                             session.shards)
        run = SuiteRun(session, suite, threat, specs, samples, saved)
        found = _run_suite(run, checks)
    if saved is not None:
        log.info("%s", saved.summary())
    log.info("attack passes per process: %s", session.shards.gather_counts(round(run.forwards())))
    found.seconds = time.time() - start
    return found


def _runnable(specs: list[AttackSpec], surrogate) -> list[AttackSpec]:
    if surrogate is None and any(s.attack == "transfer" for s in specs):
        log.warning("no surrogate model given: the transfer attack and its check are skipped")
        specs = [s for s in specs if s.attack != "transfer"]
    if not specs:
        raise ConfigError("no attack left to run: the transfer attack needs a surrogate model (--surrogate PATH)")
    return specs


def _run_suite(run: SuiteRun, checks: bool | None) -> RobustResult:
    """Every entry at the main eps, the strongest (or all) at the others, the worst case and the checks."""
    suite, session = run.suite, run.session
    eps_values, main_eps = suite.eps_values(run.threat), suite.main_eps(run.threat)
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
    settings = {**suite.to_dict(), "norm": suite.norm or run.threat.norm.value, "eps": eps_values, "main_eps": main_eps,
                "attacks": list(results), "optimizers": {a: s.optimizer for a, s in run.specs.items() if a in results}}
    found, convergence = {}, {}
    if suite.checks if checks is None else checks:
        found, convergence = run_checks(run, results, worst, keys, main_eps, at_main, strongest)
    return RobustResult(session.clean, results, worst, worst_attack, found, settings, main_eps,
                        _sample(at_main, main_eps), session.clean_emb, session.labels, convergence)


def _sample(outcomes: dict[str, _Outcome], eps: float) -> Sample:
    """The attack (not a combination) with the worst NMI at the main eps, for the pictures and the t-SNE."""
    attacks = {label: o for label, o in outcomes.items() if label not in COMBOS}
    if not attacks:
        return Sample()
    label = min(attacks, key=lambda a: attacks[a].metrics["nmi"])
    return Sample(*attacks[label].first, attack=label, eps=eps, embeddings=attacks[label].embeddings)
