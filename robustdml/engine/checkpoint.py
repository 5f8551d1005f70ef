"""Resume checkpoints: model, loss (proxies), optimizer, scheduler, RNG state and history.

Written atomically; read with ``torch.load(weights_only=True)``, which refuses any pickled object
that is not a tensor or plain container, so a malicious checkpoint cannot run code.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError
from ..files import atomic_path


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run the block on random streams of its own, seeded with ``seed``, and give the global ones
    (torch, CUDA, numpy, Python) back untouched afterwards: whatever the block draws, the caller's
    next draw is the one it would have been without the block. Robust validation during training
    runs in here, so that training with and without it gives bit-identical weights."""
    saved = rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    try:
        yield
    finally:
        set_rng_state(saved)


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelFileError(f"refusing checkpoint {path}: it holds objects other than tensors and plain "
                             f"data ({str(e).splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelFileError(f"checkpoint {path} is corrupt or not a robustdml checkpoint: "
                             f"{str(e).splitlines()[0][:200]}") from None
