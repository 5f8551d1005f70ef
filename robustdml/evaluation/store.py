"""Finished pieces of a long evaluation, kept on disk so that an interrupted run continues where it
stopped.

A :class:`PartialResults` folder holds, for one evaluation (one model, test set and suite, named by
the hash of those settings), every finished (attack, eps) entry's adversarial embeddings, and
within an entry still running every finished batch. Each file is written atomically (a temporary
file renamed into place), so a run killed at any instant leaves only whole files; the rerun reads
them back bit for bit and computes the rest, and its result equals an uninterrupted run's. A
changed setting of the whole evaluation (model, data, k-means, batch size) starts the folder
afresh; a changed attack's options only miss that attack's entries, whose names carry the hash of
their own settings.

>>> saved = PartialResults("runs/m/attack/digits-strong.partial", {"model": ..., "suite": ...})
>>> saved.entry({"label": "apgd-ce", "eps": 0.1}).load()     # None until that entry finished
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import atomic_path, settings_hash, write_json
from .shards import Shards

log = logging.getLogger(__name__)

Part = dict[str, torch.Tensor]


class PartialResults:
    """The folder of one evaluation's finished pieces (``fingerprint``: its settings, JSON-able)."""

    def __init__(self, folder: str | Path, fingerprint: dict, shards: Shards = Shards()):
        self.folder, self.shards = Path(folder), shards
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.reused_entries = self.reused_batches = 0
        if shards.first:
            self._start()
        shards.barrier()

    def _start(self) -> None:
        marker = self.folder / "settings.json"
        if marker.exists():
            try:
                same = json.loads(marker.read_text()) == self.fingerprint
            except (OSError, ValueError):
                same = False
            if same:
                return
            log.info("%s holds an evaluation with other settings: starting it afresh", self.folder)
            shutil.rmtree(self.folder)
        write_json(marker, self.fingerprint)

    def entry(self, key: dict) -> "EntryFiles":
        return EntryFiles(self, key)

    def summary(self) -> str:
        if not (self.reused_entries or self.reused_batches):
            return "nothing to reuse: evaluated from the start"
        return (f"reused {self.reused_entries} finished entries and {self.reused_batches} finished batches "
                f"from {self.folder}")


class EntryFiles:
    """One (attack, eps) entry: its finished file, or the finished batches of a run in progress."""

    def __init__(self, store: PartialResults, key: dict):
        self.store = store
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", str(key.get("label", "entry")))
        self.name = f"{label}@{key.get('eps', '')}-{settings_hash(key)[:12]}"
        self.path = store.folder / f"{self.name}.safetensors"
        self.batch_dir = store.folder / self.name

    def load(self) -> Part | None:
        part = _read(self.path)
        if part is not None:
            self.store.reused_entries += 1
            log.info("reused %s", self.name)
        return part

    def save(self, part: Part) -> None:
        """The whole entry (on the first process), its batch files then removed."""
        if self.store.shards.first:
            _write(self.path, part)
            shutil.rmtree(self.batch_dir, ignore_errors=True)

    def batch(self, number: int) -> Part | None:
        part = _read(self._batch_path(number))
        if part is not None:
            self.store.reused_batches += 1
        return part

    def save_batch(self, number: int, part: Part) -> None:
        _write(self._batch_path(number), part)

    def _batch_path(self, number: int) -> Path:
        return self.batch_dir / f"batch-{number:06d}.safetensors"


def _read(path: Path) -> Part | None:
    if not path.exists():
        return None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:  # a damaged piece is computed again
        log.warning("could not read %s (%s): computing it again", path, e)
        return None


def _write(path: Path, part: Part) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in part.items()}, str(tmp))


def fingerprint(session, suite, threat) -> dict:
    """What every entry of an evaluation depends on: the code's version, the model and test data
    (through the hash of the clean embeddings and the labels), the session's settings, the threat
    model and the surrogate. Each entry's own attack settings name its files (:meth:`PartialResults.entry`)."""
    from .. import __version__
    s = session.settings
    return {"robustdml": __version__, "clean_embeddings": _digest(session.clean_emb),
            "labels": _digest(torch.from_numpy(session.labels.astype("int64"))), "queries": session.n_query,
            "seed": s.seed, "kmeans_restarts": s.kmeans_restarts, "batch_size": s.batch_size, "ks": list(s.ks),
            "plan_seed": session.plan_seed, "threat": [threat.eps, threat.norm.value], "suite": suite.name,
            "layout": session.attack_layout,
            "surrogate": None if session.surrogate is None else _digest(*session.surrogate.state_dict().values())}


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def discard(folder: str | Path) -> None:
    """Remove an evaluation's finished pieces once its result is saved."""
    shutil.rmtree(folder, ignore_errors=True)
