"""P3: an `eat` training epoch / N x a `pgd-at` training epoch at the same K, both through the real
training loop (Trainer.train_epoch) on the built-in digits data; P3b: the same with the members
batched into one vmapped module (`batched: on`), whose target is the M1 <= 3.2 of a 3-member
ensemble on a GPU (3.2 / 3). On the CPU batching saves no launches and P3b shows what it costs."""

from __future__ import annotations

import tempfile

import torch

from robustdml.engine import Trainer, config_from_dict

from common import compare, line

TARGET = 1.05
TARGET_BATCHED = 3.2 / 3


def run(device: torch.device, members: int = 3, steps: int = 10) -> tuple[list[str], dict]:
    base = {"dataset": "digits", "embedding_dim": 64, "batch_size": 64, "robust_eval": False, "epochs": 2,
            "device": device.type}
    with tempfile.TemporaryDirectory() as tmp:
        def eat_trainer(batched: str) -> Trainer:
            kwargs = {"members": members, "steps": steps, "batched": batched}
            return Trainer(config_from_dict({**base, "method": "eat", "method_kwargs": kwargs}), f"{tmp}/eat-{batched}",
                           progress=False)

        eat, eat_batched = eat_trainer("off"), eat_trainer("on")
        pgd = Trainer(config_from_dict({**base, "method": "pgd-at", "method_kwargs": {"steps": steps}}),
                      f"{tmp}/pgd", progress=False)
        t_eat, t_pgd = compare(lambda: eat.train_epoch(0), lambda: pgd.train_epoch(0), device, repeats=3)
        t_batched, t_pgd_b = compare(lambda: eat_batched.train_epoch(0), lambda: pgd.train_epoch(0), device, repeats=3)
    details = {"model": "small-cnn", "data": "digits train (899 images, 14 batches of 64)", "members": members,
               "steps": steps, "eat_epoch_s": round(t_eat, 3), "pgd_at_epoch_s": round(t_pgd, 3),
               "eat_batched_epoch_s": round(t_batched, 3), "pgd_at_epoch_s_beside_batched": round(t_pgd_b, 3)}
    return [line("P3", t_eat / (members * t_pgd), TARGET),
            line("P3b", t_batched / (members * t_pgd_b), TARGET_BATCHED)], details
