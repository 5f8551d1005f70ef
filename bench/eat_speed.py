"""P3: an `eat` training epoch / N x a `pgd-at` training epoch at the same K, both through the real
training loop (Trainer.train_epoch) on the built-in digits data."""

from __future__ import annotations

import tempfile

import torch

from robustdml.engine import Trainer, config_from_dict

from common import compare, line

TARGET = 1.05


def run(device: torch.device, members: int = 3, steps: int = 10) -> tuple[str, dict]:
    base = {"dataset": "digits", "embedding_dim": 64, "batch_size": 64, "robust_eval": False, "epochs": 2,
            "device": device.type}
    with tempfile.TemporaryDirectory() as tmp:
        eat = Trainer(config_from_dict({**base, "method": "eat", "method_kwargs": {"members": members, "steps": steps}}),
                      f"{tmp}/eat", progress=False)
        pgd = Trainer(config_from_dict({**base, "method": "pgd-at", "method_kwargs": {"steps": steps}}),
                      f"{tmp}/pgd", progress=False)
        t_eat, t_pgd = compare(lambda: eat.train_epoch(0), lambda: pgd.train_epoch(0), device, repeats=3)
    details = {"model": "small-cnn", "data": "digits train (899 images, 14 batches of 64)", "members": members,
               "steps": steps, "eat_epoch_s": round(t_eat, 3), "pgd_at_epoch_s": round(t_pgd, 3)}
    return line("P3", t_eat / (members * t_pgd), TARGET), details
