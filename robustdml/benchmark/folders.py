"""A benchmark's output folder: runs made with other settings set aside (never deleted outright), a
file lock for processes sharing one folder, finished cells read back."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
from pathlib import Path

import yaml

from ..engine.config import TrainConfig, training_settings
from ..engine.provenance import settings_hash
from ..engine.trainer import TRAINING_REVISION
from ..models import model_info

log = logging.getLogger(__name__)


def config_changed(run: Path, cfg: TrainConfig) -> bool:
    """Whether ``run`` holds a training made with settings other than ``cfg``'s (or by an earlier
    training revision: robust validation then still wrote test statistics into the model)."""
    path = run / "config.yaml"
    if not path.is_file():
        return any((run / n).exists() for n in ("checkpoint.pt", "metrics.json"))
    try:
        held = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return True
    if not isinstance(held, dict):
        return True
    if settings_hash(training_settings(held)) != settings_hash(training_settings(cfg.to_dict())):
        return True
    last = run / "last"
    return last.is_dir() and model_info(last).get("training_revision") != TRAINING_REVISION


def set_aside(run: Path, keep: set[str] = frozenset()) -> None:
    """Move what ``run`` holds into ``run/../previous-NAME/`` (replacing an older one there), so
    that nothing a rerun supersedes is deleted outright but the one before it."""
    if not run.exists():
        return
    aside = run.parent / f"previous-{run.name}"
    if aside.exists():
        shutil.rmtree(aside)
    aside.mkdir(parents=True)
    for item in run.iterdir():
        if item.name not in keep:
            shutil.move(str(item), aside / item.name)
    log.info("moved the earlier contents of %s to %s", run, aside)


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` held for the block (waits for another process holding it)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def claimed(path: Path):
    """An exclusive lock on ``path`` for the block if no other process holds it: yields True, else
    False at once (that process is running what the lock guards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_finished(path: Path) -> dict | None:
    """A cell's result if it finished ("ok"), else None."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("status") == "ok" else None
