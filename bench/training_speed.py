"""P2: a `pgd-at` training step (K-step attack, forward, backward, optimizer step) / (K + 1) x a
`standard` forward + backward on the same batch.

T4: a defended C2F2 training step (`pgd-at` with the carried one-step adversary of the fast CPU
configs, a batch of 28x28 grayscale images) with the weights and the images in channels-last layout /
the same step, same weights, in the layout they come in (the trainer's `channels_last`).

T5: one optimiser step over a three-member C2F2 ensemble's parameters (EAT's on Fashion-MNIST, 11.4
M) with the trainer's AdamW (fused kernel) / PyTorch's default AdamW, the same gradients."""

from __future__ import annotations

import torch

from robustdml.methods import create_method

from common import compare, line, training_setup

TARGET = 1.10
T4_TARGET = 0.90
T5_TARGET = 0.50


def run(device: torch.device, steps: int = 10, batch: int = 32, size: int = 64,
        layout_batch: int = 256) -> tuple[list[str], dict]:
    p2, details = _pgd_ratio(device, steps, batch, size)
    t4, layout = _layout_ratio(device, layout_batch)
    t5, optimiser = _optimiser_ratio(device)
    return [p2, t4, t5], {**details, "T4": layout, "T5": optimiser}


def _pgd_ratio(device: torch.device, steps: int, batch: int, size: int) -> tuple[str, dict]:
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


def _layout_ratio(device: torch.device, batch: int) -> tuple[str, dict]:
    from robustdml.losses import create_loss
    from robustdml.methods.base import TrainingSetup
    from robustdml.models import create_model
    from robustdml.attacks import ThreatModel

    def trainer(layout: torch.memory_format):
        torch.manual_seed(0)
        model = create_model("c2f2", embedding_dim=128, pretrained=False).to(device).train()
        model = model.to(memory_format=layout)
        criterion = create_loss("proxy_anchor", num_classes=10, embedding_dim=128).to(device)
        optimizer = torch.optim.AdamW(list(model.parameters()) + list(criterion.parameters()), lr=1e-5)
        method = create_method("pgd-at", eps=77 / 255, steps=1, step_size=0.0755, init="carry")
        method.setup(TrainingSetup(num_samples=batch, seed=0, threat=ThreatModel(77 / 255)))
        x = torch.rand(batch, 1, 28, 28, device=device).contiguous(memory_format=layout)
        y, index = torch.arange(batch, device=device) % 10, torch.arange(batch)

        def step():
            optimizer.zero_grad(set_to_none=True)
            method.loss(model, criterion, x, y, index).backward()
            optimizer.step()
        return step

    t_last, t_plain = compare(trainer(torch.channels_last), trainer(torch.contiguous_format), device)
    details = {"model": "c2f2", "batch": batch, "image": 28, "adversary": "pgd-at, carry, 1 step",
               "channels_last_step_s": round(t_last, 4), "contiguous_step_s": round(t_plain, 4)}
    return line("T4", t_last / t_plain, T4_TARGET), details


def _optimiser_ratio(device: torch.device, members: int = 3) -> tuple[str, dict]:
    from robustdml.engine.trainer import adamw
    from robustdml.models import create_model

    def stepper(make):
        torch.manual_seed(0)
        params = [p for _ in range(members)
                  for p in create_model("c2f2", embedding_dim=512, pretrained=False).to(device).parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        return make(params).step, sum(p.numel() for p in params)

    ours, n = stepper(lambda params: adamw(params, device, lr=1e-3, weight_decay=1e-4))
    default, _ = stepper(lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4))
    t_ours, t_default = compare(ours, default, device)
    details = {"model": f"{members} x c2f2, embedding 512", "parameters": n,
               "trainer_adamw_step_s": round(t_ours, 4), "default_adamw_step_s": round(t_default, 4)}
    return line("T5", t_ours / t_default, T5_TARGET), details
