"""Reading YAML configs and ``key=value`` overrides from the command line."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..engine.config import TrainConfig, config_from_dict
from ..errors import ConfigError


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``key=value`` pairs, values parsed as YAML (``epochs=5``, ``pretrained=false``,
    ``loss_kwargs.margin=0.2`` sets one entry of a dict-valued key)."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        if "." in key:
            top, sub = key.split(".", 1)
            current = data[top] if top in data else TrainConfig().to_dict().get(top)
            if not isinstance(current, dict):
                raise ConfigError(f"override '{item}': '{top}' is not a mapping-valued config key")
            data[top] = {**current, sub: value}
        else:
            data[key] = value
    return data


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    return config_from_dict(apply_overrides(read_yaml(path) if path else {}, list(overrides)))
