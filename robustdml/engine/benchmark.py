"""The benchmark grid: cells of (dataset, backbone, method, seed), each trained and then evaluated
with the full attack suite. Every finished cell's results are written at once; a rerun skips them,
resumes a cell whose training was interrupted, and a failing cell is recorded while the grid goes on.

Layout::

    OUT/benchmark.yaml                  the resolved benchmark config
    OUT/surrogates/DATASET-BACKBONE/    standard models (seed 100) used by the transfer attack
    OUT/cells/DATASET-BACKBONE-METHOD-sSEED/run/          the training run
    OUT/cells/DATASET-BACKBONE-METHOD-sSEED/result.json   status, config, clean/attack/worst/checks
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import platform
import time
import traceback
from dataclasses import dataclass, field
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
from ..models import load_model
from .config import TrainConfig, config_from_dict, read_yaml
from .devices import resolve_device
from .trainer import Trainer

log = logging.getLogger(__name__)

SURROGATE_SEED = 100
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

    def validate(self) -> "BenchmarkConfig":
        for key, values in self.grid.items():
            if key not in ("dataset", "backbone", "method", "seed"):
                raise ConfigError(f"unknown grid key '{key}'; the grid has dataset, backbone, method, seed")
            if not isinstance(values, list):
                raise ConfigError(f"grid key '{key}' must be a list")
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
        keys = ("dataset", "backbone", "method", "seed")
        missing = [k for k in keys if not self.grid.get(k)]
        if missing:
            raise ConfigError(f"benchmark grid needs a non-empty list for {', '.join(missing)}")
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def suite(self, cfg: TrainConfig) -> AttackSuite:
        """The attack suite of a cell (its seed seeds the random starts)."""
        return AttackSuite.from_dict(self.attack, seed=cfg.seed, batch_size=cfg.eval_batch_size)

    def train_config(self, cell: dict) -> TrainConfig:
        data = {**self.train, **self.per_dataset.get(cell["dataset"], {}), **self.per_backbone.get(cell["backbone"], {}),
                "dataset": cell["dataset"], "backbone": cell["backbone"], "method": cell["method"],
                "seed": cell["seed"], "method_kwargs": dict(self.method_kwargs.get(cell["method"], {}))}
        return config_from_dict(data)


def load_benchmark_config(path: str | Path) -> BenchmarkConfig:
    path = Path(path)
    cfg = config_from_dict(read_yaml(path, "benchmark config"), BenchmarkConfig)
    if cfg.base_config:
        cfg.train = {**read_yaml(path.parent / cfg.base_config, f"{path}: base_config"), **cfg.train}
    for cell in cfg.cells():  # validate every cell's configs before any work starts
        cfg.suite(cfg.train_config(cell))
    return cfg


def cell_name(cell: dict) -> str:
    return f"{cell['dataset']}-{cell['backbone']}-{cell['method']}-s{cell['seed']}"


def software_versions() -> dict:
    import faiss
    import pytorch_metric_learning
    import sklearn
    import torchvision

    from .. import __version__
    return {"robustdml": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pytorch-metric-learning": pytorch_metric_learning.__version__,
            "faiss": faiss.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine() + " CPU"}


class Benchmark:
    def __init__(self, cfg: BenchmarkConfig, out_dir: str | Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out_dir), progress

    def run(self) -> dict[str, str]:
        """Run every unfinished cell; returns cell name -> status ("ok", "skipped", "failed")."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(self.out / "benchmark.yaml", yaml.safe_dump(_plain(self.cfg.__dict__), sort_keys=False))
        statuses = {}
        cells = self.cfg.cells()
        for i, cell in enumerate(cells, 1):
            name = cell_name(cell)
            result_path = self.out / "cells" / name / "result.json"
            if _finished(result_path):
                statuses[name] = "skipped"
                log.info("[%d/%d] %s: finished earlier, skipped", i, len(cells), name)
                continue
            log.info("[%d/%d] %s", i, len(cells), name)
            start = time.time()
            try:
                result = self.run_cell(cell)
                result.update(status="ok", seconds=round(time.time() - start, 1))
                statuses[name] = "ok"
            except (RobustDMLError, RuntimeError, ValueError, OSError) as e:
                log.error("%s failed: %s", name, e)
                result = {"cell": cell, "status": "failed", "error": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc(limit=5), "seconds": round(time.time() - start, 1)}
                statuses[name] = "failed"
            write_json(result_path, result)
        return statuses

    def surrogate(self, cell: dict) -> Path | None:
        if not self.cfg.surrogate:
            return None
        run = self.out / "surrogates" / f"{cell['dataset']}-{cell['backbone']}"
        run.mkdir(parents=True, exist_ok=True)
        with _locked(run / ".lock"):  # processes sharing one --out (--only) train it once
            if not (run / "metrics.json").is_file():
                cfg = self.cfg.train_config({**cell, "method": "standard", "seed": SURROGATE_SEED})
                cfg.robust_eval = False
                Trainer(cfg, run, resume=(run / "checkpoint.pt").is_file(), progress=self.progress).fit()
        return run

    def run_cell(self, cell: dict) -> dict:
        cfg = self.cfg.train_config(cell)
        run = self.out / "cells" / cell_name(cell) / "run"
        trainer = Trainer(cfg, run, resume=(run / "checkpoint.pt").is_file(), progress=self.progress)
        trainer.fit()
        epoch_seconds = [row["train_seconds"] for row in trainer.history if "train_seconds" in row]

        device = resolve_device(cfg.device)
        surrogate_run = self.surrogate(cell)
        query, gallery = evaluation_sets(cfg.dataset, cfg.root, image_size=cfg.image_size)
        attacked = query
        if self.cfg.attack_queries is not None:
            attacked = Subset(query, query_subset(len(query), self.cfg.attack_queries, cfg.seed).tolist())
        found = evaluate_robustness(
            load_model(run, device=device), attacked, gallery, self.cfg.suite(cfg), threat=ThreatModel.of(cfg.dataset),
            ks=dataset_spec(cfg.dataset).recall_ks, device=device, kmeans_seed=cfg.seed,
            surrogate=load_model(surrogate_run, device) if surrogate_run else None,
            kmeans_restarts=cfg.kmeans_restarts, progress=self.progress)
        result = found.to_dict()
        result.update(cell=cell, config=cfg.to_dict(), versions=software_versions(), main_eps_key=eps_key(found.main_eps))
        if epoch_seconds:
            result["seconds_per_epoch"] = round(float(np.mean(epoch_seconds)), 1)
        if cell["method"] in TSNE_METHODS and cell["seed"] == min(self.cfg.grid["seed"]):
            result["tsne"] = tsne_points(found, seed=cfg.seed)
        if self.cfg.ranking:
            ranking = evaluate_ranking(load_model(run, device=device), query, gallery, seed=cfg.seed, device=device,
                                       kmeans_restarts=cfg.kmeans_restarts, progress=self.progress, **self.cfg.ranking)
            result["robrank"] = ranking.to_dict()
        if self.cfg.certify:
            result["certify"] = self.certified(run, query, gallery, cfg, device)
        return result

    def certified(self, run: Path, query, gallery, cfg: TrainConfig, device) -> dict:
        """The cell's center-smoothing certificates: the summary (per-image radii and centroids stay out
        of the cell's JSON; `robustdml certify` writes them)."""
        from ..evaluation.certify import certify
        queries = self.cfg.certify.get("queries")
        if queries is not None:
            query = Subset(query, query_subset(len(query), queries, cfg.seed).tolist())
        found = certify(load_model(run, device=device), query, gallery, smoothing=self.cfg.smoothing(cfg.seed),
                        radii=self.cfg.certify_radii(), device=device, kmeans_seed=cfg.seed, progress=self.progress)
        summary = found.to_dict()
        for key in ("per_image", "centroids"):
            summary.pop(key)
        return summary


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


def _finished(path: Path) -> bool:
    import json
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (OSError, ValueError):
        return False


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
