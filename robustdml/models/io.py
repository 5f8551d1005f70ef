"""Saving and loading models: robustdml's own as safetensors weights + a JSON description of the
architecture, any other module as an exported program (:mod:`robustdml.models.exported`) + the same
JSON file. Loading parses only tensors, JSON and operator graphs: nothing in a model file can run code."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError, ModelFileError
from ..files import atomic_path, write_json
from .embedding import EmbeddingNet, EnsembleNet, ModelSpec
from .exported import PROGRAM, ExportedModel, export_program, load_program, save_program

FORMAT = "robustdml-model"
VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", "model.json"


def describe(model: nn.Module) -> dict:
    if isinstance(model, EnsembleNet):
        return {"kind": "ensemble", "combine": model.combine, "members": [describe(m) for m in model.members]}
    if isinstance(model, EmbeddingNet):
        return {"kind": "single", "spec": model.spec.to_dict()}
    raise TypeError(f"cannot describe {type(model).__name__}: only EmbeddingNet and EnsembleNet are saved")


def build(desc: dict, where: str = "model config") -> nn.Module:
    """Rebuild an (untrained) model from its description, checking every field."""
    if not isinstance(desc, dict):
        raise ModelFileError(f"{where}: expected an object, found {type(desc).__name__}")
    kind = desc.get("kind")
    if kind == "ensemble":
        _check_keys(desc, {"kind", "combine", "members"}, where)
        if not isinstance(desc["members"], list) or not desc["members"]:
            raise ModelFileError(f"{where}: 'members' must be a non-empty list")
        return EnsembleNet([build(m, where) for m in desc["members"]], combine=desc["combine"])
    if kind == "single":
        _check_keys(desc, {"kind", "spec"}, where)
        spec = desc["spec"]
        known = {f.name for f in fields(ModelSpec)}
        if not isinstance(spec, dict):
            raise ModelFileError(f"{where}: 'spec' must be an object")
        _check_keys(spec, known, where, required=False)
        try:
            return EmbeddingNet(ModelSpec(**spec), pretrained=False)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ModelFileError(f"{where}: invalid model spec: {e}") from None
    raise ModelFileError(f"{where}: unknown model kind {kind!r}; expected 'single' or 'ensemble'")


def _check_keys(d: dict, allowed: set[str], where: str, required: bool = True) -> None:
    unknown = set(d) - allowed
    if unknown:
        raise ModelFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    missing = allowed - set(d) if required else set()
    if missing:
        raise ModelFileError(f"{where}: missing field(s) {', '.join(sorted(missing))}")


def save_model(model: nn.Module, directory: str | Path, extra: dict | None = None, *,
               example_input: torch.Tensor | None = None, dataset: str | None = None) -> Path:
    """Write ``model`` into ``directory`` (each file atomically): ``model.json`` and the weights
    (``model.safetensors``) of a robustdml model, or, for any other module, the program exported
    from it (``model.pt2``; ``example_input`` is a batch of its input, e.g. ``torch.rand(2, 1, 28, 28)``).
    ``dataset`` records the data the model is meant for: evaluating it on other data then needs
    ``--dataset-mismatch-ok``.

    Example:
        >>> robustdml.save_model(my_net, "models/mine", example_input=torch.rand(2, 1, 8, 8), dataset="digits")
        >>> robustdml.load_model("models/mine")   # reads it back without unpickling anything
    """
    directory = Path(directory)
    extra = dict(extra or {})
    if isinstance(model, (EmbeddingNet, EnsembleNet)):
        description = describe(model)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        with atomic_path(directory / WEIGHTS) as tmp:
            save_file(state, str(tmp))
        shape = list(example_input.shape[1:]) if example_input is not None else None
    else:
        if example_input is None:
            raise ConfigError(f"save_model of a {type(model).__name__} (not built by robustdml) needs example_input=, "
                              "a batch of its input such as torch.rand(2, 3, 224, 224)")
        program, size = export_program(model, example_input)
        shape = list(example_input.shape[1:])
        description = {"kind": "exported", "program": PROGRAM, "input_shape": shape, "value_range": [0.0, 1.0],
                       "embedding_size": size, "module": type(model).__name__}
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / PROGRAM) as tmp:
            save_program(program, tmp)
    if dataset is not None:
        extra["trained_on"] = {"dataset": dataset, "input_shape": shape}
    write_json(directory / CONFIG, {"format": FORMAT, "version": VERSION, "model": description, **extra})
    return directory


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory (its ``best/`` model), a saved-model directory, or its ``model.safetensors``."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if (path / "best" / CONFIG).is_file():
        return path / "best"
    if (path / CONFIG).is_file():
        return path
    if not path.exists():
        raise ModelFileError(f"no model at {path}: the path does not exist")
    raise ModelFileError(f"no model at {path}: expected a run directory with best/{CONFIG} or a folder with {CONFIG} and {WEIGHTS}")


def model_info(path: str | Path) -> dict:
    """What a saved model's ``model.json`` says beside its architecture (``trained_on``: the dataset
    and input shape it was trained on; ``epoch``; ``metrics``), without building it."""
    config_path = resolve_model_dir(path) / CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{config_path} is not valid JSON: {e}") from None
    return {k: v for k, v in config.items() if k not in ("format", "version", "model")} if isinstance(config, dict) else {}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a saved model (or a run directory's best model) as one module in eval mode.

    Example:
        >>> model = robustdml.load_model("runs/digits")
        >>> emb = model(images)  # (B, C, H, W) in [0, 1] -> (B, D), unit norm
    """
    directory = resolve_model_dir(path)
    config_path, weights_path = directory / CONFIG, directory / WEIGHTS
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{config_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelFileError(f"{config_path} is not a robustdml model description (format != {FORMAT!r})")
    if config.get("version") != VERSION:
        raise ModelFileError(f"{config_path} has version {config.get('version')!r}; this robustdml reads version {VERSION}")
    description = config.get("model")
    if isinstance(description, dict) and description.get("kind") == "exported":
        return _load_exported(description, directory, str(config_path), device)
    model = build(description, where=str(config_path))
    if not weights_path.is_file():
        raise ModelFileError(f"{weights_path} is missing")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{weights_path} is not a readable safetensors file: {e}") from None
    own = model.state_dict()
    problems = sorted(set(own) ^ set(state))
    problems += [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
    if problems:
        raise ModelFileError(f"{weights_path} does not match {config_path}: {'; '.join(problems[:3])}"
                             + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""))
    model.load_state_dict(state)
    return model.to(device).eval()


def _load_exported(desc: dict, directory: Path, where: str, device) -> ExportedModel:
    _check_keys(desc, {"kind", "program", "input_shape", "value_range", "embedding_size", "module"}, where)
    shape = desc["input_shape"]
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ModelFileError(f"{where}: input_shape must be a list of positive sizes, got {shape!r}")
    if desc["program"] != PROGRAM:
        raise ModelFileError(f"{where}: the program file must be {PROGRAM}, not {desc['program']!r}")
    path = directory / PROGRAM
    if not path.is_file():
        raise ModelFileError(f"{path} is missing")
    return load_program(path, shape, device).eval()
