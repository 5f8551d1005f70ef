"""P1: a K-step PGD attack on a batch / K x (forward + backward w.r.t. the input) on the same batch.
P5: a K-step APGD attack / the same K-step PGD attack on the same batch (per step: APGD's momentum,
step-size checkpoints and best-point bookkeeping, and its one extra forward for the last point).

The attack adds one no-grad forward for the clean embeddings and the projection arithmetic; the
targets say that must stay within 10% of the passes it cannot avoid.
"""

from __future__ import annotations

import torch

from robustdml.attacks import EmbeddingDisplacement
from robustdml.models import create_model

from common import compare, line

TARGET = 1.10


def run(device: torch.device, steps: int = 10, batch: int = 32, size: int = 64) -> tuple[list[str], dict]:
    torch.manual_seed(0)
    model = create_model("resnet18", embedding_dim=512, pretrained=False).to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device)
    pgd = EmbeddingDisplacement(eps=8 / 255, steps=steps)
    apgd = EmbeddingDisplacement(eps=8 / 255, steps=steps, optimizer="apgd")

    def bare():
        for _ in range(steps):
            xi = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xi).sum(), xi)
        return g

    t_attack, t_bare = compare(lambda: pgd(model, x), bare, device)
    t_apgd, t_pgd = compare(lambda: apgd(model, x), lambda: pgd(model, x), device)
    details = {"model": "resnet18", "batch": batch, "image": size, "steps": steps,
               "attack_s": round(t_attack, 4), "bare_s": round(t_bare, 4),
               "apgd_s": round(t_apgd, 4), "pgd_s": round(t_pgd, 4)}
    return [line("P1", t_attack / t_bare, TARGET), line("P5", t_apgd / t_pgd, TARGET)], details
