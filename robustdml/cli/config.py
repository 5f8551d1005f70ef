"""Reading YAML configs and ``key=value`` overrides from the command line."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..engine.config import TrainConfig, config_from_dict, load_yaml, read_yaml
from ..errors import ConfigError


def _key_value(item: str) -> tuple[str, object]:
    """``key=value`` with the value parsed as YAML (a plain string where it is not valid YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"'{item}' is not of the form key=value")
    try:
        return key, load_yaml(raw) if raw else None
    except yaml.YAMLError:
        return key, raw


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``key=value`` pairs, values parsed as YAML (``epochs=5``, ``pretrained=false``,
    ``loss_kwargs.margin=0.2`` sets one entry of a dict-valued key)."""
    data = dict(data)
    for item in overrides:
        key, value = _key_value(item)
        if "." in key:
            top, sub = key.split(".", 1)
            current = data[top] if top in data else TrainConfig().to_dict().get(top)
            if not isinstance(current, dict):
                raise ConfigError(f"override '{item}': '{top}' is not a mapping-valued config key")
            data[top] = {**current, sub: value}
        else:
            data[key] = value
    return data


def parse_options(items: list[str]) -> dict[str, dict]:
    """``NAME.KEY=VALUE`` items (e.g. ``--attack-option centroid.restarts=2``) as {NAME: {KEY: VALUE}}."""
    options: dict[str, dict] = {}
    for item in items:
        key, value = _key_value(item)
        name, dot, option = key.partition(".")
        if not dot or not name or not option:
            raise ConfigError(f"'{item}' is not of the form NAME.KEY=VALUE")
        options.setdefault(name, {})[option] = value
    return options


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    return config_from_dict(apply_overrides(read_yaml(path) if path else {}, list(overrides)))
