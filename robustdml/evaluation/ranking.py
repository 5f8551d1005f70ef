"""RobRank's ranking-robustness protocol: its nine attacks under one profile, each reported as
RobRank reports it, and the Empirical Robustness Score (ERS) of the ten columns.

The database is the clean test set (or the clean gallery where a dataset has one); queries are the
test images, all of them or a seeded subsample (``queries``) to bound CPU runs.

>>> found = evaluate_ranking(model, test_set, profile="rob28", queries=2000)
>>> found.columns["CA+"], found.ers
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..attacks import ATTACKS, AttackContext, create_attack
from ..attacks.base import CleanPool
from ..attacks.ranking import ERS_COLUMNS, PROFILES, ers, ranking_attacks, ranking_columns
from ..errors import ConfigError
from ..models.modes import eval_mode
from ..registry import check_options
from .checks import es_start_check
from .metrics import kmeans, nmi
from .perturb import channels_last_inputs
from .results import schema
from .session import EvalSettings, EvaluationSession

#: RobRank's published Fashion-MNIST rows (its doc/dmltab-fashion.txt; C2F2, triplet ``ptripletN``,
#: rob28): clean R@1 and NMI, then its ten columns; ERS follows from the columns by :func:`ers`.
PUBLISHED_FASHION = {
    "standard": {"recall@1": 0.876, "nmi": 0.766, "columns": (1.1, 96.8, 0.3, 97.8, 0.990, 1.604, 0.1, 0.0, 12.6, 0.0)},
    "est": {"recall@1": 0.766, "nmi": 0.610, "columns": (14.9, 36.1, 20.9, 48.6, 0.966, 0.288, 62.0, 28.0, 20.8, 0.0)},
    "act": {"recall@1": 0.787, "nmi": 0.672, "columns": (33.6, 14.6, 38.5, 12.1, 0.259, 0.541, 48.5, 59.5, 60.2, 0.1)},
}

#: RobRank's clustering for NMI: one faiss k-means run, seed 123, with faiss's defaults otherwise
#: (25 iterations; trained on a random sample of 256 points per centroid, 2,560 of Fashion-MNIST's 10,000)
ROBRANK_KMEANS = {"seed": 123, "restarts": 1, "iterations": 25, "max_points_per_centroid": 256}


@dataclass
class RankingResult:
    """``columns``: RobRank's ten columns after the attacks; ``clean_columns``: the same numbers on
    the unperturbed queries (with the same targets); ``ers`` from ``columns``. ``clean``: our clean
    metrics of the whole test set, plus ``robrank_nmi``, the NMI of RobRank's own k-means
    (:data:`ROBRANK_KMEANS`), for comparison with its tables. ``checks``: ``es_start``
    (:func:`es_start_check`) where ES ran."""

    profile: str
    eps: float
    queries: int
    seed: int
    columns: dict[str, float]
    clean_columns: dict[str, float]
    ers: float | None  # None unless every attack ran
    clean: dict[str, float]
    options: dict = field(default_factory=dict)
    seconds: float = 0.0
    checks: dict = field(default_factory=dict)
    about: dict = field(default_factory=dict)  # what was evaluated (dataset, model), saved beside the numbers

    def to_dict(self) -> dict:
        out = {"schema": schema("ranking"), "suite": "robrank", **asdict(self), "seconds": round(self.seconds, 1)}
        out.pop("about")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "RankingResult":
        own = {f.name for f in fields(cls)} - {"about"}
        return cls(**{k: v for k, v in data.items() if k in own},
                   about={k: v for k, v in data.items() if k not in own | {"schema", "suite"}})

    def table(self) -> str:
        """RobRank's table: the ten columns after the attacks, their clean values and the ERS."""
        return ranking_table(self.to_dict())

    def save(self, path) -> None:
        from ..files import write_json
        write_json(path, {**self.to_dict(), **self.about})


def query_subset(n: int, queries: int | None, seed: int) -> np.ndarray:
    """Sorted positions of the queries: all ``n``, or a seeded sample of ``queries`` of them."""
    if queries is None or queries >= n:
        return np.arange(n)
    if queries < 1:
        raise ConfigError(f"queries must be at least 1, got {queries}")
    return np.sort(np.random.default_rng(seed).choice(n, queries, replace=False))


def evaluate_ranking(model: nn.Module, query_set: Dataset | None = None, gallery_set: Dataset | None = None, *,
                     profile: str = "rob28", queries: int | None = None, seed: int = 0,
                     attacks: list[str] | None = None, attack_kwargs: dict | None = None,
                     device: str | torch.device = "cpu", batch_size: int = 128, workers: int = 0, kmeans_restarts: int = 1,
                     check_es_start: bool = True, progress: bool = False,
                     session: EvaluationSession | None = None) -> RankingResult:
    """Every RobRank attack of ``profile`` (``rob28``, ``rob224``) on the queries; see the module doc.

    ``attacks``: a subset of the nine (default all; the ERS needs all). ``attack_kwargs``: per-attack
    constructor options, e.g. ``{"gtm": {"robrank_compat": True}}`` (RobRank's own target choice for
    GTM, for reproducing its table). ``check_es_start``: where ES runs, run it again from the
    opposite start (its ``robrank_compat`` flipped) for :func:`es_start_check`; the reported columns
    stay those of the start asked for. ``session``: an :class:`EvaluationSession` already built on
    the model and test data, whose clean embeddings and clean metrics are reused (the data,
    ``device``, k-means and loader arguments are then its own; ``batch_size`` stays the attacks').
    """
    attacks, attack_kwargs = _checked(profile, attacks, attack_kwargs or {})
    start = time.perf_counter()
    if session is None:
        session = EvaluationSession(model, query_set, gallery_set, EvalSettings(
            seed=seed, kmeans_restarts=kmeans_restarts, batch_size=batch_size, ks=(1,), device=device,
            workers=workers, progress=progress))
    run = _RankingRun(session, PROFILES[profile], query_subset(session.n_query, queries, seed), seed, batch_size,
                      profile)
    checks = {}
    with eval_mode(session.model):
        for name in attacks:
            run.columns(name, attack_kwargs.get(name, {}), with_clean=True)
        if check_es_start and "es" in attacks:
            options = dict(attack_kwargs.get("es", {}))
            options["robrank_compat"] = not options.get("robrank_compat", False)
            other = run.columns("es", options, with_clean=False, label="es, other start")
            checks["es_start"] = es_start_check({c: run.sums[c] / run.n for c in other},
                                                {c: v / run.n for c, v in other.items()},
                                                "robrank" if options["robrank_compat"] else "ours")
        clean = {**session.clean, "robrank_nmi": robrank_nmi(session)}
    ran = [c for c in ranking_columns() if any(c in ATTACKS[a].columns for a in attacks)]
    columns = {c: run.sums[c] / run.n for c in ran}
    return RankingResult(profile=profile, eps=run.settings["eps"], queries=run.n, seed=seed, columns=columns,
                         clean_columns={c: run.clean_sums[c] / run.n for c in ran},
                         ers=ers(columns) if set(ERS_COLUMNS) <= set(ran) else None, clean=clean,
                         options={k: dict(v) for k, v in attack_kwargs.items()},
                         seconds=time.perf_counter() - start, checks=checks)


def _checked(profile: str, attacks: list[str] | None, attack_kwargs: dict) -> tuple[list[str], dict]:
    """The attacks and their options, with a one-line error for an unknown profile, attack or option."""
    PROFILES.lookup(profile)  # a one-line error naming the profiles
    suite = ranking_attacks()
    attacks = list(attacks or suite)
    unknown = [a for a in attacks if a not in suite]
    if unknown:
        raise ConfigError(f"not a robrank attack: {', '.join(unknown)}; choose from {', '.join(suite)}")
    for name, options in attack_kwargs.items():
        if name not in suite:
            raise ConfigError(f"attack option for '{name}', which is not in the robrank suite ({', '.join(suite)})")
        check_options(ATTACKS[name], options, f"attack '{name}'")
    return attacks, attack_kwargs


def robrank_nmi(session: EvaluationSession) -> float:
    """The NMI of RobRank's own k-means (:data:`ROBRANK_KMEANS`) of the clean queries, for its tables."""
    labels = session.labels[: session.n_query]
    clusters, _ = kmeans(session.query_emb.numpy(), int(len(np.unique(labels))), **ROBRANK_KMEANS)
    return nmi(labels, clusters)


class _RankingRun:
    """The chosen queries of one session under RobRank's attacks: the columns summed over the queries."""

    def __init__(self, session: EvaluationSession, settings: dict, chosen: np.ndarray, seed: int, batch_size: int,
                 profile: str):
        self.session, self.settings, self.chosen, self.batch_size, self.profile = (
            session, settings, chosen, batch_size, profile)
        self.n = len(chosen)
        picked = torch.from_numpy(chosen)
        # targets are planned for the chosen queries only, against the whole clean database
        self.pool = CleanPool(session.query_emb[picked], torch.from_numpy(session.labels[chosen]),
                              torch.zeros(0, dtype=torch.long), torch.zeros(0, 1), session.reference,
                              session.reference_labels, seed=seed, self_index=session.self_index(picked))
        self.sums = dict.fromkeys(ranking_columns(), 0.0)
        self.clean_sums = dict.fromkeys(ranking_columns(), 0.0)

    def columns(self, name: str, options: dict, with_clean: bool, label: str = "") -> dict[str, float]:
        """Run attack ``name``; its columns are added to the sums (with the clean ones), or, without
        ``with_clean``, returned as sums of their own (a check's second run)."""
        s = self.session
        into = self.sums if with_clean else dict.fromkeys(ATTACKS[name].columns, 0.0)
        attack = create_attack(name, self.settings["eps"], steps=self.settings["steps"],
                               step_size=self.settings["step_size"], **options)
        targets = attack.plan(self.pool)
        done = 0
        crafted_on = s.attack_model  # as the suite's attacks: the faster copy; the model embeds the result
        with channels_last_inputs(s, crafted_on):
            for images, labels, index in s.batches(self.chosen, self.batch_size, desc=f"{self.profile} {label or name}"):
                local = torch.arange(done, done + len(index))
                done += len(index)
                context = AttackContext(labels=labels, gallery=s.reference, gallery_labels=s.reference_labels,
                                        self_index=s.self_index(index),
                                        targets=None if targets is None else targets[local])
                x_adv = attack(crafted_on, images, context)
                with torch.no_grad():
                    adversarial = s.model(x_adv).float().cpu()
                clean_emb = s.clean_emb[index]
                for column, values in attack.score(adversarial, clean_emb, context).items():
                    into[column] += float(values.sum())
                if with_clean:
                    for column, values in attack.score(clean_emb, clean_emb, context).items():
                        self.clean_sums[column] += float(values.sum())
        return into


def ranking_table(result: dict) -> str:
    """A markdown table of one result's columns (attacked and clean) and the ERS."""
    columns = [c for c in ranking_columns() if c in result["columns"]]
    head = "| | " + " | ".join(columns) + " | ERS |"
    rule = "|---" * (len(columns) + 2) + "|"

    def fmt(c, v):
        return f"{v:.3f}" if c in ("TMA", "ES:D") else f"{v:.1f}"

    complete = set(ERS_COLUMNS) <= set(columns)
    rows = [f"| {label} | " + " | ".join(fmt(c, result[key][c]) for c in columns) + f" | {value} |"
            for label, key, value in (("attacked", "columns", f"{result['ers']:.1f}" if complete else "—"),
                                      ("clean", "clean_columns", f"{ers(result['clean_columns']):.1f}" if complete else "—"))]
    return "\n".join([head, rule, *rows])


def es_start_line(result: dict) -> str | None:
    """One line on a result's ``es_start`` check, or None where it did not run."""
    check = result.get("checks", {}).get("es_start")
    if not check:
        return None
    whose = "RobRank's" if check["other_start"] == "robrank" else "our"
    other = f"ES from {whose} start: ES:D {check['other']['ES:D']:.3f}, ES:R {check['other']['ES:R']:.1f}"
    if check["passed"]:
        return f"check es_start: passed ({other})"
    return (f"check es_start: FAILED ({other}, stronger than the reported {result['columns']['ES:D']:.3f} / "
            f"{result['columns']['ES:R']:.1f}: the reported ES figures overstate robustness)")
