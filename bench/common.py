"""Helpers shared by the benchmarks: timing by alternating runs and taking medians."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def compare(a: Callable[[], object], b: Callable[[], object], device: torch.device, repeats: int = 5) -> tuple[float, float]:
    """Median times of ``a`` and ``b``, measured alternately (after one warm-up each) so drift hits both."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a, device))
        tb.append(timed(b, device))
    return statistics.median(ta), statistics.median(tb)


def line(name: str, ratio: float, target: float) -> str:
    return f"{name} {ratio:.2f} {target:.2f}"
