"""Reading YAML configs and ``key=value`` overrides from the command line."""

from __future__ import annotations

from pathlib import Path

from ..engine.config import TrainConfig, apply_overrides, config_from_dict, key_value, read_yaml
from ..errors import ConfigError


def parse_options(items: list[str]) -> dict[str, dict]:
    """``NAME.KEY=VALUE`` items (e.g. ``--attack-option centroid.restarts=2``) as {NAME: {KEY: VALUE}}."""
    options: dict[str, dict] = {}
    for item in items:
        key, value = key_value(item)
        name, dot, option = key.partition(".")
        if not dot or not name or not option:
            raise ConfigError(f"'{item}' is not of the form NAME.KEY=VALUE")
        options.setdefault(name, {})[option] = value
    return options


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """The training config of the YAML file ``path`` (none: the defaults), ``key=value`` overrides laid over it."""
    return config_from_dict(apply_overrides(read_yaml(path) if path else {}, list(overrides)))
