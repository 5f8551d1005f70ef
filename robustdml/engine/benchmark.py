"""The benchmark grid: cells of (dataset, backbone, method, seed), each trained and then evaluated
with the full attack suite. Every finished cell's results are written at once; a failing cell is
recorded while the grid goes on.

Every cell records, for each of its parts (training, attack suite, RobRank's ranking attacks,
certificates), the full resolved settings that produced it and their hash. A rerun compares them
with the config's: an unchanged cell is skipped, a cell whose training was interrupted resumes, a
changed attack suite (or ranking, or certify) section re-runs just that part on the trained model, a
changed training config retrains the cell (the earlier run is kept in ``previous-run/``) and
evaluates it again. ``reuse_stale`` keeps changed parts deliberately; the report marks them stale.

Layout::

    OUT/benchmark.yaml                  the resolved benchmark config
    OUT/surrogates/DATASET-BACKBONE/    standard models (seed 100) used by the transfer attack
    OUT/cells/DATASET-BACKBONE-METHOD-sSEED/run/          the training run
    OUT/cells/DATASET-BACKBONE-METHOD-sSEED/result.json   status, parts (settings + hash), versions,
                                                          clean/attack/worst/checks, robrank, certify
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Subset

from ..attacks import ThreatModel
from ..data import dataset_spec, evaluation_sets
from ..errors import ConfigError, RobustDMLError
from ..evaluation.ranking import evaluate_ranking, query_subset
from ..evaluation.robust import AttackSuite, RobustResult, eps_key, evaluate_robustness
from ..files import write_json, write_text
from ..models import load_model, model_info
from .config import TrainConfig, apply_overrides, config_from_dict, read_yaml
from .devices import resolve_device
from .provenance import settings_hash, software_versions
from .trainer import TRAINING_REVISION, Trainer

log = logging.getLogger(__name__)

SURROGATE_SEED = 100
SAVED = "saved"            # the backbone of a saved model's cell
_SAVED_STAND_IN = "small-cnn"  # a backbone for the evaluation settings (and the surrogate) of saved-model cells
TSNE_METHODS = ("standard", "eat")


@dataclass
class BenchmarkConfig:
    name: str = "benchmark"
    out: str | None = None
    grid: dict = field(default_factory=lambda: {"method": ["standard"], "dataset": ["digits"],
                                                "backbone": ["small-cnn"], "seed": [0]})
    train: dict = field(default_factory=dict)          # TrainConfig keys shared by every cell
    per_dataset: dict = field(default_factory=dict)    # dataset -> TrainConfig keys (root, image_size, ...)
    per_backbone: dict = field(default_factory=dict)   # backbone -> TrainConfig keys (pretrained, ...)
    method_kwargs: dict = field(default_factory=dict)  # method -> its options
    attack: dict = field(default_factory=dict)         # an AttackSuite: attacks, eps (default the dataset's), steps, ...
    # RobRank's ranking attacks and ERS for every cell as well: {profile, queries, attack_kwargs}; empty: not run
    ranking: dict = field(default_factory=dict)
    # the clustering suite on a seeded random sample of this many test queries (None: all of them)
    attack_queries: int | None = None
    surrogate: bool = True
    # center-smoothing certificates for every cell as well (`robustdml certify`): {sigma, radii, queries,
    # samples, center_samples, candidates, alpha, delta, batch_size}; empty: not run
    certify: dict = field(default_factory=dict)
    base_config: str | None = None  # a training YAML the `train` keys are laid over (relative to this file)
    # saved models evaluated beside (or instead of) the trained cells: name -> folder written by
    # robustdml.save_model or a run directory (relative to this file); one cell per dataset and seed
    models: dict = field(default_factory=dict)

    def validate(self) -> "BenchmarkConfig":
        for key, values in self.grid.items():
            if key not in ("dataset", "backbone", "method", "seed"):
                raise ConfigError(f"unknown grid key '{key}'; the grid has dataset, backbone, method, seed")
            if not isinstance(values, list):
                raise ConfigError(f"grid key '{key}' must be a list")
        if not isinstance(self.models, dict) or not all(isinstance(v, str) for v in self.models.values()):
            raise ConfigError("models maps names to saved-model folders, e.g. models: {mine: models/mine}")
        clash = set(map(str, self.grid.get("method") or [])) & set(self.models)
        if clash:
            raise ConfigError(f"models and the grid's methods share the name {sorted(clash)[0]!r}: rename the model")
        if self.attack_queries is not None and (not isinstance(self.attack_queries, int) or self.attack_queries < 2):
            raise ConfigError(f"attack_queries must be a whole number >= 2, got {self.attack_queries!r}")
        unknown = set(self.ranking) - {"profile", "queries", "attack_kwargs"}
        if unknown:
            raise ConfigError(f"ranking takes profile, queries and attack_kwargs, not {', '.join(sorted(unknown))}")
        if self.certify:
            self.certify_radii()  # checks sigma, the sample counts and the radii
            queries = self.certify.get("queries")
            if queries is not None and (not isinstance(queries, int) or queries < 2):
                raise ConfigError(f"certify queries must be a whole number >= 2, got {queries!r}")
        return self

    def smoothing(self, seed: int = 0):
        """The center smoothing of the ``certify`` section (one-line errors for bad values)."""
        from ..evaluation.certify import Smoothing
        options = {k: v for k, v in self.certify.items() if k not in ("radii", "queries")}
        unknown = set(options) - {"sigma", "samples", "center_samples", "candidates", "alpha", "delta", "batch_size"}
        if unknown:
            raise ConfigError(f"certify takes sigma, radii, queries, samples, center_samples, candidates, alpha, delta "
                              f"and batch_size, not {', '.join(sorted(unknown))}")
        if "sigma" not in options:
            raise ConfigError("certify needs sigma (the noise std in [0, 1] pixel units)")
        return Smoothing(**options, seed=seed)

    def certify_radii(self) -> list[float]:
        """The ``certify`` section's radii (default 0 to 1 x sigma), checked against its smoothing."""
        from ..evaluation.certify import check_radii, default_radii
        smoothing = self.smoothing()
        return check_radii(self.certify.get("radii", default_radii(smoothing.sigma)), smoothing)

    def restrict(self, only: list[str]) -> "BenchmarkConfig":
        """Keep the grid values named by ``KEY=VALUE`` items (values of one key are alternatives)."""
        keep: dict[str, list[str]] = {}
        for item in only:
            key, sep, value = item.partition("=")
            if not sep or key not in ("dataset", "backbone", "method", "seed"):
                raise ConfigError(f"--only takes KEY=VALUE with KEY one of dataset, backbone, method, seed; got {item!r}")
            keep.setdefault(key, []).append(value)
        for key, values in keep.items():
            grid = self.grid.get(key) or []
            unknown = [v for v in values if v not in map(str, grid)]
            if unknown:
                raise ConfigError(f"--only {key}={unknown[0]}: not in the grid's {key} values "
                                  f"({', '.join(map(str, grid))})")
            self.grid[key] = [g for g in grid if str(g) in values]
        return self

    def cells(self) -> list[dict]:
        """The trained cells of the grid, then one cell per saved model, dataset and seed (backbone
        ``saved``, method the model's name)."""
        keys = ("dataset", "backbone", "method", "seed")
        needed = keys if self.grid.get("method") or not self.models else ("dataset", "seed")
        missing = [k for k in needed if not self.grid.get(k)]
        if missing:
            raise ConfigError(f"benchmark grid needs a non-empty list for {', '.join(missing)}")
        trained = ([dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]
                   if self.grid.get("method") else [])
        return trained + [{"dataset": d, "backbone": SAVED, "method": name, "seed": s}
                          for name in self.models for d in self.grid["dataset"] for s in self.grid["seed"]]

    def suite(self, cfg: TrainConfig) -> AttackSuite:
        """The attack suite of a cell (its seed seeds the random starts)."""
        return AttackSuite.from_dict(self.attack, seed=cfg.seed, batch_size=cfg.eval_batch_size)

    def train_config(self, cell: dict) -> TrainConfig:
        """The cell's training config; for a saved model's cell, the evaluation settings it shares
        with the trained cells (seed, k-means runs, batch size, device, data), on a standard model."""
        if cell["backbone"] == SAVED:
            cell = {**cell, "backbone": (self.grid.get("backbone") or [_SAVED_STAND_IN])[0], "method": "standard"}
        data = {**self.train, **self.per_dataset.get(cell["dataset"], {}), **self.per_backbone.get(cell["backbone"], {}),
                "dataset": cell["dataset"], "backbone": cell["backbone"], "method": cell["method"],
                "seed": cell["seed"], "method_kwargs": dict(self.method_kwargs.get(cell["method"], {}))}
        return config_from_dict(data)


def load_benchmark_config(path: str | Path, overrides: list[str] = ()) -> BenchmarkConfig:
    """The benchmark config of ``path``, with ``key=value`` overrides laid over it (``attack.steps=5``,
    ``grid.seed=[0,1]``, ``train.epochs=2``), every cell's configs validated."""
    path = Path(path)
    data = apply_overrides(read_yaml(path, "benchmark config"), list(overrides), defaults=asdict(BenchmarkConfig()))
    cfg = config_from_dict(data, BenchmarkConfig)
    if cfg.base_config:
        cfg.train = {**read_yaml(path.parent / cfg.base_config, f"{path}: base_config"), **cfg.train}
    if isinstance(cfg.models, dict):
        cfg.models = {name: str((path.parent / folder).resolve()) if isinstance(folder, str) else folder
                      for name, folder in cfg.models.items()}
    for cell in cfg.cells():  # validate every cell's configs before any work starts
        cfg.suite(cfg.train_config(cell))
    return cfg


def cell_name(cell: dict) -> str:
    return f"{cell['dataset']}-{cell['backbone']}-{cell['method']}-s{cell['seed']}"


# The parts of a cell, in the order they run, and the keys of the cell's result each one writes.
PARTS = ("train", "attack", "ranking", "certify")
PART_KEYS = {
    "train": ("config", "seconds_per_epoch"),
    "attack": ("clean", "attacks", "worst", "worst_attack", "settings", "checks", "convergence", "main_eps_key",
               "tsne", "test_images"),
    "ranking": ("robrank",),
    "certify": ("certify",),
}


@dataclass
class CellPlan:
    """What a cell's rerun does: the settings of each part it should hold, the parts to run
    (a changed training reruns everything after it) and the parts kept although stale."""

    parts: dict[str, dict]
    run: list[str]
    stale: dict[str, list[str]] = field(default_factory=dict)  # part -> what changed
    previous: dict | None = None


class Benchmark:
    def __init__(self, cfg: BenchmarkConfig, out_dir: str | Path, progress: bool = True, reuse_stale: bool = False):
        self.cfg, self.out, self.progress, self.reuse_stale = cfg, Path(out_dir), progress, reuse_stale

    def run(self) -> dict[str, str]:
        """Run every cell whose results are missing or were made with other settings; returns cell
        name -> status: "ok" (run from training on), "updated" (some evaluation parts re-run, the
        training reused), "skipped" (up to date), "stale" (kept with ``reuse_stale``), "failed"."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(self.out / "benchmark.yaml", yaml.safe_dump(_plain(self.cfg.__dict__), sort_keys=False))
        statuses = {}
        cells = self.cfg.cells()
        for i, cell in enumerate(cells, 1):
            name = cell_name(cell)
            result_path = self.out / "cells" / name / "result.json"
            start = time.time()
            try:
                plan = self.plan(cell, _read_ok(result_path))
                if not plan.run:
                    statuses[name] = "stale" if plan.stale else "skipped"
                    log.info("[%d/%d] %s: %s", i, len(cells), name, "kept with stale " + ", ".join(plan.stale)
                             if plan.stale else "up to date, skipped")
                    if plan.stale:
                        write_json(result_path, {**plan.previous, "stale": plan.stale})
                    continue
                log.info("[%d/%d] %s: %s", i, len(cells), name, _plan_line(plan))
                result = self.run_cell(cell, plan)
                result.update(status="ok", seconds=round(time.time() - start, 1))
                statuses[name] = "ok" if "train" in plan.run or plan.previous is None else "updated"
            except (RobustDMLError, RuntimeError, ValueError, OSError) as e:
                log.error("%s failed: %s", name, e)
                result = {"cell": cell, "status": "failed", "error": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc(limit=5), "seconds": round(time.time() - start, 1)}
                statuses[name] = "failed"
            write_json(result_path, result)
        return statuses

    # --- settings of each part ---------------------------------------------------------------------
    def part_settings(self, cell: dict) -> dict[str, dict]:
        """part -> {"hash", "settings"}: the full resolved settings each part of the cell runs with. A
        part's hash covers the training's too, so that a retrained model invalidates its evaluations."""
        cfg = self.cfg.train_config(cell)
        if cell["backbone"] == SAVED:
            train = {"model": self.cfg.models[cell["method"]], "files": _model_files_hash(self.cfg.models[cell["method"]])}
        else:
            train = {**cfg.to_dict(), "training_revision": TRAINING_REVISION}
        train_hash = settings_hash(train)
        query, gallery = evaluation_sets(cfg.dataset, cfg.root, image_size=cfg.image_size)
        data = {"dataset": cfg.dataset, "root": cfg.root, "image_size": cfg.image_size, "test_images": len(query),
                "gallery_images": len(gallery) if gallery is not None else 0}
        surrogate = (settings_hash({**self.surrogate_config(cell).to_dict(), "training_revision": TRAINING_REVISION})
                     if self.cfg.surrogate else None)
        parts = {"train": train,
                 "attack": {"suite": self.cfg.suite(cfg).to_dict(), "attack_queries": self.cfg.attack_queries,
                            "surrogate": surrogate, "kmeans_seed": cfg.seed, "kmeans_restarts": cfg.kmeans_restarts,
                            **data}}
        if self.cfg.ranking:
            parts["ranking"] = {"ranking": _plain(self.cfg.ranking), "seed": cfg.seed,
                                "kmeans_restarts": cfg.kmeans_restarts, **data}
        if self.cfg.certify:
            parts["certify"] = {"certify": _plain(self.cfg.certify), "seed": cfg.seed, **data}
        return {name: {"hash": train_hash if name == "train" else settings_hash({**settings, "model": train_hash}),
                       "settings": settings} for name, settings in parts.items()}

    def plan(self, cell: dict, previous: dict | None) -> CellPlan:
        parts = self.part_settings(cell)
        if previous is None:
            return CellPlan(parts, list(parts))
        held = _held_parts(previous)
        changed = {name: _differences(held.get(name, {}).get("settings"), part["settings"])
                   for name, part in parts.items() if held.get(name, {}).get("hash") != part["hash"]}
        if not changed:
            return CellPlan(parts, [], previous=previous)
        if self.reuse_stale:
            return CellPlan(parts, [], stale=changed, previous=previous)
        run = list(parts) if "train" in changed else [p for p in parts if p in changed]
        return CellPlan(parts, run, stale=changed, previous=previous)

    def surrogate_config(self, cell: dict) -> TrainConfig:
        cfg = self.cfg.train_config({**cell, "method": "standard", "seed": SURROGATE_SEED})
        cfg.robust_eval = False
        return cfg

    def surrogate(self, cell: dict) -> Path | None:
        if not self.cfg.surrogate:
            return None
        cfg = self.surrogate_config(cell)
        run = self.out / "surrogates" / f"{cell['dataset']}-{cfg.backbone}"
        run.mkdir(parents=True, exist_ok=True)
        with _locked(run / ".lock"):  # processes sharing one --out (--only) train it once
            if _config_changed(run, cfg):
                log.info("the surrogate of %s was trained with other settings: training it again", run.name)
                _set_aside(run, keep={".lock"})
            if not (run / "metrics.json").is_file():
                Trainer(cfg, run, resume=(run / "checkpoint.pt").is_file(), progress=self.progress).fit()
        return run

    # --- running ---------------------------------------------------------------------------------
    def run_cell(self, cell: dict, plan: CellPlan) -> dict:
        cfg = self.cfg.train_config(cell)
        run = self.out / "cells" / cell_name(cell) / "run"
        result = {k: v for k, v in (plan.previous or {}).items() if k not in ("status", "error", "traceback", "stale")}
        for part in plan.run:  # what is re-run is replaced, what was removed from the config goes
            for key in PART_KEYS[part]:
                result.pop(key, None)
        for part in set(_held_parts(result)) - set(plan.parts):
            for key in PART_KEYS[part]:
                result.pop(key, None)
        seconds = {}
        started = time.time()
        if cell["backbone"] == SAVED:
            run = Path(self.cfg.models[cell["method"]])
            result["config"] = plan.parts["train"]["settings"]
            log.info("%s: the saved model %s, nothing to train", cell_name(cell), run)
        elif "train" in plan.run:
            if plan.previous is not None or _config_changed(run, cfg):
                _set_aside(run)  # the model of other settings: kept in previous-run/, never resumed
            trainer = Trainer(cfg, run, resume=(run / "checkpoint.pt").is_file(), progress=self.progress)
            trainer.fit()
            epoch_seconds = [row["train_seconds"] for row in trainer.history if "train_seconds" in row]
            result["config"] = cfg.to_dict()
            if epoch_seconds:
                result["seconds_per_epoch"] = round(float(np.mean(epoch_seconds)), 1)
        else:
            log.info("%s: training reused (0 s)", cell_name(cell))
        seconds["train"] = round(time.time() - started, 1)

        device = resolve_device(cfg.device)
        query, gallery = evaluation_sets(cfg.dataset, cfg.root, image_size=cfg.image_size)
        model = load_model(run, device=device) if set(plan.run) - {"train"} else None  # once for every part
        if "attack" in plan.run:
            started = time.time()
            result.update(self.attacked(cell, cfg, model, query, gallery, device))
            seconds["attack"] = round(time.time() - started, 1)
        if "ranking" in plan.run:
            started = time.time()
            ranking = evaluate_ranking(model, query, gallery, seed=cfg.seed, device=device,
                                       kmeans_restarts=cfg.kmeans_restarts, progress=self.progress, **self.cfg.ranking)
            result["robrank"] = ranking.to_dict()
            seconds["ranking"] = round(time.time() - started, 1)
        if "certify" in plan.run:
            started = time.time()
            result["certify"] = self.certified(model, query, gallery, cfg, device)
            seconds["certify"] = round(time.time() - started, 1)
        result.update(cell=cell, parts=plan.parts, versions=software_versions(), part_seconds=seconds,
                      reused=[p for p in plan.parts if p not in plan.run],
                      provenance={"dataset": cfg.dataset, "root": cfg.root, "test_images": len(query)})
        return result

    def attacked(self, cell: dict, cfg: TrainConfig, model, query, gallery, device) -> dict:
        """The attack part: the suite on the cell's model (and the t-SNE of its worst attack)."""
        surrogate_run = self.surrogate(cell)
        attacked = query
        if self.cfg.attack_queries is not None:
            attacked = Subset(query, query_subset(len(query), self.cfg.attack_queries, cfg.seed).tolist())
        found = evaluate_robustness(
            model, attacked, gallery, self.cfg.suite(cfg), threat=ThreatModel.of(cfg.dataset),
            ks=dataset_spec(cfg.dataset).recall_ks, device=device, kmeans_seed=cfg.seed,
            surrogate=load_model(surrogate_run, device) if surrogate_run else None,
            kmeans_restarts=cfg.kmeans_restarts, progress=self.progress)
        result = {**found.to_dict(), "main_eps_key": eps_key(found.main_eps), "test_images": len(attacked)}
        result.pop("schema")  # a cell holds several results: each of its nested ones names its own
        if cell["method"] in TSNE_METHODS and cell["backbone"] != SAVED and cell["seed"] == min(self.cfg.grid["seed"]):
            result["tsne"] = tsne_points(found, seed=cfg.seed)
        return result

    def certified(self, model, query, gallery, cfg: TrainConfig, device) -> dict:
        """The cell's center-smoothing certificates: the summary (per-image radii and centroids stay out
        of the cell's JSON; `robustdml certify` writes them)."""
        from ..evaluation.certify import certify
        queries = self.cfg.certify.get("queries")
        if queries is not None:
            query = Subset(query, query_subset(len(query), queries, cfg.seed).tolist())
        found = certify(model, query, gallery, smoothing=self.cfg.smoothing(cfg.seed),
                        radii=self.cfg.certify_radii(), device=device, kmeans_seed=cfg.seed, progress=self.progress)
        summary = found.to_dict()
        for key in ("per_image", "centroids"):
            summary.pop(key)
        return summary


def _model_files_hash(folder: str) -> str:
    """The hash of a saved model's files (a changed model re-runs its cell's evaluations)."""
    import hashlib
    from ..models.io import resolve_model_dir
    digest = hashlib.sha256()
    directory = resolve_model_dir(folder)
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name.startswith("model.")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _held_parts(result: dict) -> dict[str, dict]:
    """The parts a cell's result holds: its ``parts`` record, or for a cell written before parts
    were recorded, the training config it stored (its evaluations have no record and count as changed)."""
    if "parts" in result:
        return result["parts"]
    return {"train": {"hash": settings_hash(result["config"]), "settings": result["config"]}} if "config" in result else {}


def _differences(old: dict | None, new: dict, limit: int = 4) -> list[str]:
    """The settings that differ, as ``key: old -> new`` lines (at most ``limit``, then a count)."""
    if old is None:
        return ["no settings recorded (made by an earlier robustdml)"]
    a, b = _flatten(old), _flatten(new)
    lines = [f"{k}: {a.get(k, '-')} -> {b.get(k, '-')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return lines[:limit] + ([f"{len(lines) - limit} more"] if len(lines) > limit else [])


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, default=str)
    return out


def _plan_line(plan: CellPlan) -> str:
    if plan.previous is None:
        return "training and evaluating"
    what = "; ".join(f"{part} settings changed ({', '.join(lines)})" for part, lines in plan.stale.items())
    if "train" in plan.run:
        return f"{what}: retraining and evaluating again"
    return f"{what}: re-running {', '.join(plan.run)}, training reused"


def _config_changed(run: Path, cfg: TrainConfig) -> bool:
    """Whether ``run`` holds a training made with settings other than ``cfg``'s (or by an earlier
    training revision: robust validation then still wrote test statistics into the model)."""
    path = run / "config.yaml"
    if not path.is_file():
        return any((run / n).exists() for n in ("checkpoint.pt", "metrics.json"))
    try:
        held = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return True
    if not isinstance(held, dict):
        return True
    if settings_hash(held) != settings_hash(cfg.to_dict()):
        return True
    last = run / "last"
    return last.is_dir() and model_info(last).get("training_revision") != TRAINING_REVISION


def _set_aside(run: Path, keep: set[str] = frozenset()) -> None:
    """Move what ``run`` holds into ``run/../previous-NAME/`` (replacing an older one there), so
    that nothing a rerun supersedes is deleted outright but the one before it."""
    if not run.exists():
        return
    aside = run.parent / f"previous-{run.name}"
    if aside.exists():
        shutil.rmtree(aside)
    aside.mkdir(parents=True)
    for item in run.iterdir():
        if item.name not in keep:
            shutil.move(str(item), aside / item.name)
    log.info("moved the earlier contents of %s to %s", run, aside)


def tsne_points(found: RobustResult, n: int = 400, seed: int = 0) -> dict:
    """2-D t-SNE of the same test images, clean and under the attack with the worst NMI at the main eps."""
    from sklearn.manifold import TSNE

    adv = found.sample.embeddings
    if adv is None:
        return {}
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(adv), min(n, len(adv)), replace=False))
    both = np.concatenate([found.clean_embeddings.numpy()[idx], adv.numpy()[idx]])
    xy = TSNE(2, init="pca", perplexity=30, random_state=seed).fit_transform(both)
    return {"attack": found.sample.attack, "eps": found.sample.eps, "labels": found.labels[idx].tolist(),
            "clean": xy[: len(idx)].round(3).tolist(), "adversarial": xy[len(idx):].round(3).tolist()}


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` held for the block (waits for another process holding it)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_ok(path: Path) -> dict | None:
    """A cell's result if it finished ("ok"), else None."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("status") == "ok" else None


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
