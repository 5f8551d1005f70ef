"""What a cell's rerun does: the parts a cell holds, the settings each was made with, what changed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ..engine.config import training_settings
from ..engine.provenance import settings_hash
from ..models.io import resolve_model_dir

# The parts of a cell, in the order they run, and the keys of the cell's result each one writes.
PARTS = ("train", "attack", "ranking", "certify")
PART_KEYS = {
    "train": ("config", "seconds_per_epoch"),
    "attack": ("clean", "attacks", "worst", "worst_attack", "settings", "checks", "convergence", "main_eps_key",
               "tsne", "test_images"),
    "ranking": ("robrank",),
    "certify": ("certify",),
}


@dataclass
class CellPlan:
    """What a cell's rerun does: the settings of each part it should hold, the parts to run
    (a changed training reruns everything after it) and the parts kept although stale."""

    parts: dict[str, dict]
    run: list[str]
    stale: dict[str, list[str]] = field(default_factory=dict)  # part -> what changed
    previous: dict | None = None


def model_files_hash(folder: str) -> str:
    """The hash of a saved model's files (a changed model re-runs its cell's evaluations)."""
    digest = hashlib.sha256()
    directory = resolve_model_dir(folder)
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name.startswith("model.")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def held_parts(result: dict) -> dict[str, dict]:
    """The parts a cell's result holds: its ``parts`` record, or for a cell written before parts
    were recorded, the training config it stored (its evaluations have no record and count as changed)."""
    if "parts" in result:
        return result["parts"]
    if "config" not in result:
        return {}
    config = training_settings(result["config"])
    return {"train": {"hash": settings_hash(config), "settings": config}}


def differences(old: dict | None, new: dict, limit: int = 4) -> list[str]:
    """The settings that differ, as ``key: old -> new`` lines (at most ``limit``, then a count)."""
    if old is None:
        return ["no settings recorded (made by an earlier robustdml)"]
    a, b = _flatten(old), _flatten(new)
    lines = [f"{k}: {a.get(k, '-')} -> {b.get(k, '-')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return lines[:limit] + ([f"{len(lines) - limit} more"] if len(lines) > limit else [])


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, default=str)
    return out


def plan_line(plan: CellPlan) -> str:
    if plan.previous is None:
        return "training and evaluating"
    what = "; ".join(f"{part} settings changed ({', '.join(lines)})" for part, lines in plan.stale.items())
    if "train" in plan.run:
        return f"{what}: retraining and evaluating again"
    return f"{what}: re-running {', '.join(plan.run)}, training reused"
