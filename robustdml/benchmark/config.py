"""A benchmark's configuration: the grid of cells, the sections every cell shares, one-line errors
for bad values, and ``key=value`` overrides."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..engine.config import TrainConfig, apply_overrides, config_from_dict, read_yaml
from ..errors import ConfigError
from ..evaluation.suite import AttackSuite

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
    # named variants of a method, usable in the grid's `method` list beside the methods themselves:
    # name -> {method: eat, method_kwargs: {transfer: self, ...}} (its options replace method_kwargs')
    variants: dict = field(default_factory=dict)
    # the rule the report applies to the cells, fixed before any figure is seen: which readings beat
    # the best single-model defence and a control (robustdml.reporting.decision); empty: none
    decision: dict = field(default_factory=dict)

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
        self._check_variants()
        if self.decision:
            from ..reporting.decision import DecisionRule
            names = [str(m) for m in self.grid.get("method") or []] + list(self.models)
            self.decision = DecisionRule.from_dict(self.decision, names, max(2, len(self.grid.get("seed") or []))).to_dict()
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

    def _check_variants(self) -> None:
        from ..methods import METHODS
        if not isinstance(self.variants, dict):
            raise ConfigError("variants maps names to {method: NAME, method_kwargs: {...}}")
        for name, variant in self.variants.items():
            if name in METHODS or name in self.models:
                raise ConfigError(f"variant {name!r} has the name of a method or a saved model: rename it")
            if not isinstance(variant, dict) or set(variant) - {"method", "method_kwargs"} or "method" not in variant:
                raise ConfigError(f"variant {name!r} must be {{method: NAME, method_kwargs: {{...}}}}")
            if not isinstance(variant.get("method_kwargs", {}), dict):
                raise ConfigError(f"variant {name!r}: method_kwargs must be a mapping")

    def method_of(self, name: str) -> tuple[str, dict]:
        """The method and options behind a grid ``method`` value: a variant's, or the method's own."""
        if name in self.variants:
            variant = self.variants[name]
            return variant["method"], dict(variant.get("method_kwargs", {}))
        return name, dict(self.method_kwargs.get(name, {}))

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
        method, options = self.method_of(cell["method"])
        data = {**self.train, **self.per_dataset.get(cell["dataset"], {}), **self.per_backbone.get(cell["backbone"], {}),
                "dataset": cell["dataset"], "backbone": cell["backbone"], "method": method,
                "seed": cell["seed"], "method_kwargs": options}
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
    from ..methods import create_method
    for cell in cfg.cells():  # validate every cell's configs, its method's options too, before any work starts
        train_cfg = cfg.train_config(cell)
        cfg.suite(train_cfg)
        create_method(train_cfg.method, **train_cfg.method_kwargs)
    return cfg


def cell_name(cell: dict) -> str:
    return f"{cell['dataset']}-{cell['backbone']}-{cell['method']}-s{cell['seed']}"


def plain(x):
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x
