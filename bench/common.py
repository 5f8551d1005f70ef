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


def training_setup(device: torch.device, backbone: str, batch: int, size: int, classes: int):
    """A randomly initialised model, Proxy Anchor loss, AdamW and one random batch (seeded):
    (model, criterion, optimizer, x, y, index)."""
    from robustdml.losses import create_loss
    from robustdml.models import create_model

    torch.manual_seed(0)
    model = create_model(backbone, embedding_dim=512, pretrained=False).to(device).train()
    criterion = create_loss("proxy_anchor", num_classes=classes, embedding_dim=512).to(device)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(criterion.parameters()), lr=1e-5)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.arange(batch, device=device) % classes
    return model, criterion, optimizer, x, y, torch.arange(batch)


def line(name: str, ratio: float, target: float) -> str:
    return f"{name} {ratio:.2f} {target:.2f}"


def print_figures(lines: list[str], details: dict) -> int:
    """A benchmark script's output: its figure lines, a blank line, the details as JSON; exit 0."""
    import json

    print("\n".join(lines))
    print()
    print(json.dumps(details, indent=2))
    return 0
