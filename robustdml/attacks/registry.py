"""The attack registry: names to classes, so the CLI and tests enumerate what exists."""

from __future__ import annotations

from ..errors import ConfigError

ATTACKS: dict[str, type] = {}


def register_attack(cls):
    ATTACKS[cls.name] = cls
    return cls


def create_attack(name: str, eps: float, **kwargs):
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack '{name}'; choose from {', '.join(ATTACKS)} (or 'all')")
    return ATTACKS[name](eps, **kwargs)
