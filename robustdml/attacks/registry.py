"""The attack registry: names to classes, so the CLI, configs and tests enumerate what exists."""

from __future__ import annotations

from ..registry import Registry

ATTACKS: Registry = Registry("attack")
register_attack = ATTACKS.register


def create_attack(name: str, eps: float, **options):
    """The attack ``name`` at budget ``eps``; ``options`` are checked against its constructor."""
    return ATTACKS.create(name, eps, **options)
