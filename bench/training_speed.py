"""P2: a `pgd-at` training step (K-step attack, forward, backward, optimizer step) / (K + 1) x a
`standard` forward + backward on the same batch."""

from __future__ import annotations

import torch

from robustdml.methods import create_method

from common import compare, line, training_setup

TARGET = 1.10


def run(device: torch.device, steps: int = 10, batch: int = 32, size: int = 64) -> tuple[str, dict]:
    model, criterion, optimizer, x, y, index = training_setup(device, "resnet18", batch, size, classes=16)
    pgd = create_method("pgd-at", eps=8 / 255, steps=steps)

    def pgd_step():
        optimizer.zero_grad(set_to_none=True)
        pgd.loss(model, criterion, x, y, index).backward()
        optimizer.step()

    def standard_passes():
        for _ in range(steps + 1):
            optimizer.zero_grad(set_to_none=True)
            criterion(model(x), y).backward()

    t_pgd, t_std = compare(pgd_step, standard_passes, device)
    details = {"model": "resnet18", "batch": batch, "image": size, "steps": steps,
               "pgd_at_step_s": round(t_pgd, 4), "k_plus_1_standard_s": round(t_std, 4)}
    return line("P2", t_pgd / t_std, TARGET), details
