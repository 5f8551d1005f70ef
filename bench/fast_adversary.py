"""F1: a `pgd-at` training epoch with the carried one-step adversary (`init: carry`, `steps: 1`)
/ the same epoch with the 10-step default, both through the real training loop
(Trainer.train_epoch) on the built-in digits data. Also printed over the same default: the
carried two-step adversary's epoch (`F1c2`; a step of eps/4 or eps/2 costs the same) and the
FGSM-RS preset's (`F1rs`).

What the fast adversary saves is its steps: 2 passes per image (one adversary step, one update)
against 11, so about 0.2 is the floor; the robustness it keeps is measured in
docs/results-fast.md, not here."""

from __future__ import annotations

import tempfile

import torch

from robustdml.engine import Trainer, config_from_dict

from common import compare, line

TARGET = 0.30


#: figure name -> the fast adversary's options, each timed against the 10-step default
FAST = {"F1": {"init": "carry", "steps": 1}, "F1c2": {"init": "carry", "steps": 2}, "F1rs": {"preset": "fgsm-rs"}}


def run(device: torch.device) -> tuple[list[str], dict]:
    base = {"dataset": "digits", "embedding_dim": 64, "batch_size": 64, "robust_eval": False, "epochs": 2,
            "device": device.type, "method": "pgd-at"}
    figures, details = [], {"model": "small-cnn", "data": "digits train (899 images, 14 batches of 64)"}
    with tempfile.TemporaryDirectory() as tmp:
        default = Trainer(config_from_dict(base), f"{tmp}/default", progress=False)
        for name, options in FAST.items():
            fast = Trainer(config_from_dict({**base, "method_kwargs": options}), f"{tmp}/{name}", progress=False)
            t_fast, t_default = compare(lambda: fast.train_epoch(0), lambda: default.train_epoch(0), device, repeats=3)
            figures.append(line(name, t_fast / t_default, TARGET))
            details[name] = {"options": options, "fast_epoch_s": round(t_fast, 3), "default_epoch_s": round(t_default, 3)}
    return figures, details


if __name__ == "__main__":
    figures, details = run(torch.device("cpu"))
    print("\n".join(figures))
    print(details)
