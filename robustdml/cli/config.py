"""Reading YAML configs and ``key=value`` overrides from the command line."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..engine.config import TrainConfig, config_from_dict, load_yaml, read_yaml
from ..errors import ConfigError


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``key=value`` pairs, values parsed as YAML (``epochs=5``, ``pretrained=false``,
    ``loss_kwargs.margin=0.2`` sets one entry of a dict-valued key)."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            value = load_yaml(raw) if raw else None
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
