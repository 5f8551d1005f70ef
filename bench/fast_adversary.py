"""F1: a `pgd-at` training epoch with the carried one-step adversary (`init: carry`, `steps: 1`)
/ the same epoch with the 10-step default, both through the real training loop
(Trainer.train_epoch) on the built-in digits data. Also printed over the same default: the
carried two-step adversary's epoch (`F1c2`; a step of eps/4 or eps/2 costs the same), the
FGSM-RS preset's (`F1rs`) and the carried one-step adversary's with the free step (`F1free`:
a second step per visit from the update's own input gradient), and with the training loss as the
adversary's objective, which needs no clean forward pass: the carried step alone (`F1loss`) and
with the free step (`F1freeloss`; two carried steps: `F1c2freeloss`).

What the fast adversary saves is its steps: 2 passes per image (one adversary step, one update)
against 11, so about 0.2 is the floor; the robustness it keeps is measured in
docs/results-fast.md, not here.

``--breakdown`` splits a batch's time, by profiling one epoch of each setting, into the adversary's
steps, the rest of the adversary (the displacement target's clean forward pass, the carried bank)
and the update (the training forward and backward passes, the optimiser), and prints the floor of
each ratio: what it would be if the adversary's setup cost nothing."""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile

import torch

from robustdml.engine import Trainer, config_from_dict

from common import compare, line

TARGET = 0.30


#: figure name -> the fast adversary's options, each timed against the 10-step default
FAST = {"F1": {"init": "carry", "steps": 1}, "F1c2": {"init": "carry", "steps": 2}, "F1rs": {"preset": "fgsm-rs"},
        "F1free": {"init": "carry", "steps": 1, "free_step": True},
        "F1loss": {"init": "carry", "steps": 1, "objective": "loss"},
        "F1freeloss": {"init": "carry", "steps": 1, "free_step": True, "objective": "loss"},
        "F1c2freeloss": {"init": "carry", "steps": 2, "free_step": True, "objective": "loss"}}


def base_config(device: torch.device, method: str = "pgd-at") -> dict:
    """The run on digits every figure times (the 10-step default unless options are added)."""
    return {"dataset": "digits", "embedding_dim": 64, "batch_size": 64, "robust_eval": False, "epochs": 2,
            "device": device.type, "method": method}


def run(device: torch.device, method: str = "pgd-at", repeats: int = 7,
        settings: list[str] | None = None) -> tuple[list[str], dict]:
    """Each fast setting's epoch over the default's; for a method other than `pgd-at` (whose ratios
    are the F1 figures) each name carries the method's, e.g. `F1freeloss-eat`."""
    base = base_config(device, method)
    figures, details = [], {"model": "small-cnn", "method": method,
                            "data": "digits train (899 images, 14 batches of 64)"}
    with tempfile.TemporaryDirectory() as tmp:
        default = Trainer(config_from_dict(base), f"{tmp}/default", progress=False)
        for name, options in FAST.items():
            if settings and name not in settings:
                continue
            fast = Trainer(config_from_dict({**base, "method_kwargs": options}), f"{tmp}/{name}", progress=False)
            t_fast, t_default = compare(lambda: fast.train_epoch(0), lambda: default.train_epoch(0), device, repeats=repeats)
            name = name if method == "pgd-at" else f"{name}-{method}"
            figures.append(line(name, t_fast / t_default, TARGET))
            details[name] = {"options": options, "fast_epoch_s": round(t_fast, 3), "default_epoch_s": round(t_default, 3)}
    return figures, details


def _profiled(trainer: Trainer) -> dict[str, float]:
    """Seconds per batch of one epoch (after a warm-up one): the adversary's steps, the rest of the
    adversary, and the update (the step without the adversary)."""
    trainer.train_epoch(0)
    profile = cProfile.Profile()
    profile.enable()
    trainer.train_epoch(1)
    profile.disable()
    spent = pstats.Stats(profile).stats  # (file, line, function) -> (..., cumulative seconds, callers)

    def seconds(module: str, name: str) -> float:
        return sum(row[3] for (path, _, fn), row in spent.items() if os.path.basename(path) == module and fn == name)

    batches = len(trainer.loader)
    steps, adversary = seconds("optim.py", "value_and_grad"), seconds("adversarial.py", "__call__")
    step = seconds("trainer.py", "train_step")
    return {"steps": steps / batches, "adversary_setup": (adversary - steps) / batches,
            "update": (step - adversary) / batches}


def breakdown(device: torch.device) -> list[str]:
    base = base_config(device)
    rows, parts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in {"default": {}, **FAST}.items():
            parts[name] = _profiled(Trainer(config_from_dict({**base, "method_kwargs": options}), f"{tmp}/{name}",
                                            progress=False))
    default = parts.pop("default")
    rows.append(f"default: {_ms(default)}")
    for name, part in parts.items():
        measured = sum(part.values()) / sum(default.values())
        floor = (part["steps"] + part["update"]) / (default["steps"] + default["update"])
        rows.append(f"{name}: {_ms(part)}; ratio {measured:.2f}, with no adversary setup {floor:.2f}")
    return rows


def _ms(part: dict[str, float]) -> str:
    return ", ".join(f"{key} {1000 * value:.1f} ms" for key, value in part.items()) + " a batch"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--breakdown", action="store_true", help="split a batch's time and print each ratio's floor")
    parser.add_argument("--method", choices=("pgd-at", "eat"), default="pgd-at",
                        help="time these settings for this method against its own 10-step default (default: pgd-at, F1)")
    parser.add_argument("--settings", nargs="+", choices=list(FAST), metavar="NAME",
                        help=f"time only these settings (default: every one: {', '.join(FAST)})")
    args = parser.parse_args()
    if args.breakdown:
        print("\n".join(breakdown(torch.device("cpu"))))
    else:
        figures, details = run(torch.device("cpu"), args.method, settings=args.settings)
        print("\n".join(figures))
        print(details)
