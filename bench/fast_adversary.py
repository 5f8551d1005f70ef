"""F1: a `pgd-at` training epoch with the carried one-step adversary (`init: carry`, `steps: 1`)
/ the same epoch with the 10-step default, both through the real training loop
(Trainer.train_epoch) on the built-in digits data. Also printed: the FGSM-RS preset's epoch over
the same default (`F1rs`).

What the fast adversary saves is its steps: 2 passes per image (one adversary step, one update)
against 11, so about 0.2 is the floor; the robustness it keeps is measured in
docs/results-fast.md, not here."""

from __future__ import annotations

import tempfile

import torch

from robustdml.engine import Trainer, config_from_dict

from common import compare, line

TARGET = 0.30


def run(device: torch.device) -> tuple[list[str], dict]:
    base = {"dataset": "digits", "embedding_dim": 64, "batch_size": 64, "robust_eval": False, "epochs": 2,
            "device": device.type, "method": "pgd-at"}
    with tempfile.TemporaryDirectory() as tmp:
        default = Trainer(config_from_dict(base), f"{tmp}/default", progress=False)
        carried = Trainer(config_from_dict({**base, "method_kwargs": {"init": "carry", "steps": 1}}), f"{tmp}/carry",
                          progress=False)
        fgsm = Trainer(config_from_dict({**base, "method_kwargs": {"preset": "fgsm-rs"}}), f"{tmp}/fgsm",
                       progress=False)
        t_carry, t_default = compare(lambda: carried.train_epoch(0), lambda: default.train_epoch(0), device, repeats=3)
        t_fgsm, t_default2 = compare(lambda: fgsm.train_epoch(0), lambda: default.train_epoch(0), device, repeats=3)
    details = {"model": "small-cnn", "data": "digits train (899 images, 14 batches of 64)",
               "default_epoch_s": round(t_default, 3), "carry_1_step_epoch_s": round(t_carry, 3),
               "fgsm_rs_epoch_s": round(t_fgsm, 3)}
    return [line("F1", t_carry / t_default, TARGET), line("F1rs", t_fgsm / t_default2, TARGET)], details


if __name__ == "__main__":
    figures, details = run(torch.device("cpu"))
    print("\n".join(figures))
    print(details)
