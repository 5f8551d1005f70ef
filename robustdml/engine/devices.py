"""Choosing the device and the number of data-loading processes, in one place for every command."""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu`` or ``cuda[:N]``; a one-line error when CUDA is asked for
    and absent, or the name is not a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device cpu (or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], not '{name}'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], not '{name}'") from None


def default_workers(device: torch.device, world: int = 1) -> int:
    """Data-loading processes when the user leaves them unset: none on a CPU (they would compete
    with the computation for the cores), on a GPU enough to keep it fed (up to 8 per process)."""
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus // world - 1))
