"""P2: a `pgd-at` training step (K-step attack, forward, backward, optimizer step) / (K + 1) x a
`standard` forward + backward on the same batch."""

from __future__ import annotations

import torch

from robustdml.losses import create_loss
from robustdml.methods import create_method
from robustdml.models import create_model

from common import compare, line

TARGET = 1.10


def run(device: torch.device, steps: int = 10, batch: int = 32, size: int = 64) -> tuple[str, dict]:
    torch.manual_seed(0)
    model = create_model("resnet18", embedding_dim=512, pretrained=False).to(device).train()
    criterion = create_loss("proxy_anchor", num_classes=16, embedding_dim=512).to(device)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(criterion.parameters()), lr=1e-5)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.arange(batch, device=device) % 16
    index = torch.arange(batch)
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
