"""The training configuration: one flat dataclass, validated before any work starts."""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields

import yaml

from ..errors import ConfigError
from ..registry import switch

SCHEDULES = ("step", "cosine", "none")
SAMPLERS = ("auto", "random", "class-balanced", "pairs")


class YAMLLoader(yaml.SafeLoader):
    """Safe YAML that also reads ``1e-4`` as a float (plain YAML 1.1 wants ``1.0e-4``)."""


YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."))


def load_yaml(text: str):
    return yaml.load(text, Loader=YAMLLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path, what: str = "config file") -> dict:
    """A YAML mapping from a file, with one-line errors for a missing file, bad YAML or a non-mapping."""
    from pathlib import Path
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys to values")
    return data


@dataclass
class TrainConfig:
    # data
    dataset: str = "digits"
    root: str | None = None
    image_size: int = 224
    workers: int | None = None  # data-loading processes; default: 0 on a CPU, up to 8 per GPU
    # model
    backbone: str = "small-cnn"
    pretrained: bool | str = False
    embedding_dim: int = 512
    freeze_bn: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    backbone_kwargs: dict = field(default_factory=dict)
    # loss and method
    loss: str = "proxy_anchor"
    loss_kwargs: dict = field(default_factory=lambda: {"margin": 0.1, "alpha": 32})
    method: str = "standard"
    method_kwargs: dict = field(default_factory=dict)
    # optimisation (Proxy Anchor recipe: AdamW, proxies at 100x the learning rate, step decay)
    epochs: int = 40
    batch_size: int = 128
    samples_per_class: int = 0
    # batches: "auto" = class-balanced with samples_per_class > 0, else random; "pairs" = RobRank's SPC-2
    sampler: str = "auto"
    lr: float = 1e-4
    proxy_lr_mult: float = 100.0
    noise_sigma: float = 0.0  # Gaussian noise of this std added to every training image (for `robustdml certify`)
    backbone_lr_mult: float = 1.0  # the backbone's lr = lr x this (the embedding head's: lr), e.g. 0.1 for a pretrained ViT
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    schedule: str = "step"
    lr_step: int = 10
    lr_gamma: float = 0.5
    grad_clip: float = 0.0
    # evaluation and bookkeeping
    eval_every: int = 1
    robust_eval: bool = True  # a cheap attack on a fixed subset of the test set, every evaluation
    robust_eval_attack: str = "centroid"  # an attack (run alone, robust_eval_steps PGD steps) or a suite: fast
    robust_eval_eps: float | None = None  # default: the dataset's eps
    robust_eval_steps: int = 5
    robust_eval_size: int = 512
    eval_batch_size: int = 256
    kmeans_restarts: int = 5  # k-means runs per clustering evaluation, the best kept (1 is cheaper on large sets)
    select_metric: str = "recall@1"  # the "best" model; "last" keeps the final epoch
    seed: int = 0
    device: str = "auto"
    # speed: bf16 autocast (CUDA only); channels_last memory format of the weights and the images,
    # on a CPU too (bench T4: a defended C2F2 training step in channels-last / contiguous)
    amp: bool = True
    channels_last: bool = True
    # CUDA graphs for the training step's model passes (robustdml.models.graphed): "auto" = on a
    # single CUDA device when the method allows it, "on" (also under several processes), "off" (the
    # default until the graphed step has been measured against the eager one on a GPU)
    cuda_graphs: str | bool = "off"
    check_sync: bool = False  # multi-process: verify after every step that all ranks hold identical weights

    def validate(self) -> "TrainConfig":
        """Raise a one-line ConfigError for the first invalid value; returns the config."""
        for ok, message in self._named_checks() + self._value_checks():
            if not ok:
                raise ConfigError(message)
        return self

    def _named_checks(self) -> list[tuple[bool, str]]:
        """Names that must be registered: dataset, backbone, method, loss, attack or suite, metric."""
        from ..attacks import ATTACKS
        from ..data import DATASETS
        from ..evaluation.metrics import METRICS, is_metric
        from ..evaluation.suite import NAMED
        from ..losses import LOSSES, _key
        from ..methods import METHODS
        from ..models import BACKBONES, is_backbone

        return [
            (self.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)}, not '{self.dataset}'"),
            (is_backbone(self.backbone),
             f"backbone must be one of {', '.join(BACKBONES)} or timm/<a timm model name>, not '{self.backbone}'"),
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}, not '{self.method}'"),
            (_key(self.loss) in LOSSES, f"loss '{self.loss}' is not a pytorch-metric-learning loss"),
            (self.sampler in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)}, not '{self.sampler}'"),
            (self.sampler != "class-balanced" or self.samples_per_class > 0,
             "sampler class-balanced needs samples_per_class > 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, not '{self.schedule}'"),
            (is_metric(self.select_metric.removeprefix("robust_")) or self.select_metric == "last",
             f"select_metric must be last or a metric ({', '.join(m for m in METRICS if m != 'recall@1')}, "
             f"recall@K; robust_ prefix for the robust validation metric), not '{self.select_metric}'"),
            (self.robust_eval_attack in NAMED or (self.robust_eval_attack in ATTACKS
                                                  and ATTACKS[self.robust_eval_attack].white_box),
             f"robust_eval_attack must be a suite ({', '.join(NAMED)}) or a white-box attack "
             f"({', '.join(a for a, c in ATTACKS.items() if c.white_box)})"),
        ]

    def _value_checks(self) -> list[tuple[bool, str]]:
        return [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be at least 2, got {self.batch_size}"),
            (self.samples_per_class >= 0, f"samples_per_class must be 0 (random batches) or more, got {self.samples_per_class}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.proxy_lr_mult > 0, f"proxy_lr_mult must be positive, got {self.proxy_lr_mult}"),
            (self.backbone_lr_mult > 0, f"backbone_lr_mult must be positive, got {self.backbone_lr_mult}"),
            (self.noise_sigma >= 0, f"noise_sigma must be >= 0, got {self.noise_sigma}"),
            (self.lr * self.proxy_lr_mult < 1e30, "lr x proxy_lr_mult must be below 1e30 (float32 optimiser state)"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
             f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}"),
            (self.lr_step >= 1, f"lr_step must be at least 1, got {self.lr_step}"),
            (0 < self.lr_gamma <= 1, f"lr_gamma must be in (0, 1], got {self.lr_gamma}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}"),
            (self.eval_every >= 1, f"eval_every must be at least 1, got {self.eval_every}"),
            (self.kmeans_restarts >= 1, f"kmeans_restarts must be at least 1, got {self.kmeans_restarts}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be at least 1, got {self.eval_batch_size}"),
            (self.embedding_dim >= 1, f"embedding_dim must be at least 1, got {self.embedding_dim}"),
            (self.image_size >= 8, f"image_size must be at least 8, got {self.image_size}"),
            (self.workers is None or self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (not self.select_metric.startswith("robust_") or self.robust_eval,
             "a robust_ select_metric needs robust_eval: true"),
            (self.robust_eval_eps is None or 0 <= self.robust_eval_eps <= 1,
             f"robust_eval_eps must be in [0, 1] (an L∞ budget for [0, 1] images; 8/255, not 8), got {self.robust_eval_eps}"),
            (self.robust_eval_steps >= 1, f"robust_eval_steps must be at least 1, got {self.robust_eval_steps}"),
            (self.robust_eval_size >= 2, f"robust_eval_size must be at least 2, got {self.robust_eval_size}"),
            (self.graph_mode in GRAPH_MODES,
             f"cuda_graphs must be one of {', '.join(GRAPH_MODES)}, not '{self.cuda_graphs}'"),
            (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             f"device must be auto, cpu or cuda[:N], not '{self.device}'"),
        ]

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def graph_mode(self) -> str:
        """``cuda_graphs`` as auto, on or off (YAML reads a bare on/off as a boolean)."""
        return switch(self.cuda_graphs)


GRAPH_MODES = ("auto", "on", "off")

# Settings that change how fast a run trains, not what it trains: left out of the settings a
# benchmark compares, so that a finished cell stays valid when only they differ (or did not exist).
RESULT_NEUTRAL = ("cuda_graphs",)


def training_settings(settings: dict) -> dict:
    """A training config's settings without the :data:`RESULT_NEUTRAL` ones."""
    return {k: v for k, v in settings.items() if k not in RESULT_NEUTRAL}


def _type_ok(value, annotation) -> bool:
    if annotation is typing.Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(annotation) or (typing.Any,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def config_from_dict(data: dict, cls=TrainConfig):
    """Build and validate a config; unknown keys get a did-you-mean, wrong types a clear error."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(f"unknown config key '{key}'" + (f"; did you mean '{close[0]}'?" if close else
                                                              f"; known keys: {', '.join(known)}"))
        if (key == "eps" or key.endswith("_eps")) and isinstance(value, str):
            from ..attacks import parse_eps
            value = parse_eps(value, key)  # 8/255
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"config key '{key}' expects {_type_name(hints[key])}, got {value!r}")
        if hints[key] is float and isinstance(value, int):
            value = float(value)
        values[key] = value
    return cls(**values).validate()


def _type_name(annotation) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def key_value(item: str) -> tuple[str, object]:
    """``key=value`` with the value parsed as YAML (a plain string where it is not valid YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"'{item}' is not of the form key=value")
    try:
        return key, load_yaml(raw) if raw else None
    except yaml.YAMLError:
        return key, raw


def apply_overrides(data: dict, overrides: list[str], defaults: dict | None = None) -> dict:
    """``key=value`` pairs, values parsed as YAML (``epochs=5``, ``pretrained=false``;
    ``loss_kwargs.margin=0.2`` sets one entry of a mapping-valued key, ``attack.steps=5`` of a
    benchmark's section). ``defaults``: the config's own values of keys the file leaves out
    (default: a training config's)."""
    data = dict(data)
    defaults = TrainConfig().to_dict() if defaults is None else defaults
    for item in overrides:
        key, value = key_value(item)
        *path, last = key.split(".")
        node, known = data, defaults
        for i, part in enumerate(path):
            current = node.get(part, (known or {}).get(part) if isinstance(known, dict) else None)
            if current is None and i > 0:
                current = {}
            if not isinstance(current, dict):
                raise ConfigError(f"override '{item}': '{'.'.join(path[:i + 1])}' is not a mapping-valued config key")
            node[part] = dict(current)
            node, known = node[part], (known or {}).get(part) if isinstance(known, dict) else None
        node[last] = value
    return data
