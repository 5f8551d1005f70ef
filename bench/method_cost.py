"""M1: what one training epoch of each method costs under RobRank's Fashion-MNIST recipe, measured
side by side in one run: C2F2, the pair triplet loss, 128-pair batches of real Fashion-MNIST images,
every defence with RobRank's 28x28 training adversary at K steps. For each method, the median time of
real training steps (``Trainer.train_step`` on the loader's batches, after warm-up steps) times the
steps of an epoch; then each method's epoch over ``standard``'s.

    python bench/method_cost.py                          # K = 32 (RobRank's), 6 timed steps each
    python bench/method_cost.py --steps 8 --batches 3    # RobRank's 8-step override, quicker
    python bench/method_cost.py --root DIR --json cost.json

Needs Fashion-MNIST (``--root``, default Debian's dataset-fashion-mnist folder), so it is not part of
``make bench``. Prints ``M1 <eat epoch / pgd-at epoch>`` (EAT with 3 members: about 3 expected), a
table, then JSON.

With ``--fast``, every defence is also timed with the fast training adversary of
configs/benchmark-fashion-cpu-fast.yaml (the carried one-step adversary), its steps alternated with
the K-step ones on the same batches, and ``F2<method> <fast epoch / K-step epoch> 0.15`` is printed
for each, the moment it is measured:

    python bench/method_cost.py --fast --methods est act --batches 3 --warmup 1
    python bench/method_cost.py --fast --fast-steps 2 --methods act    # two carried steps per visit
    python bench/method_cost.py --fast --fast-steps 2 --fast-init zero --methods act   # two steps from the clean images
    python bench/method_cost.py --fast --fast-steps 3 --fast-carry-by image --methods act   # one perturbation per image
    python bench/method_cost.py --fast --fast-steps 3 --fast-free --methods act   # and the free step after each update

With ``--graphs on`` (a CUDA device), every trainer replays its model passes from CUDA graphs
(``cuda_graphs``, robustdml/models/graphed.py): the epochs the grids would cost with the graphed step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from common import sync, timed  # noqa: E402

from robustdml.engine import Trainer, config_from_dict  # noqa: E402
from robustdml.engine.config import read_yaml  # noqa: E402
from robustdml.engine.devices import resolve_device  # noqa: E402

METHODS = ("standard", "est", "act", "hm", "pgd-at", "eat")
RECIPE = Path(__file__).parent.parent / "configs" / "fashion-robrank.yaml"
FAST = Path(__file__).parent.parent / "configs" / "benchmark-fashion-cpu-fast.yaml"
STEP_3_255 = 3 / 255
F2_TARGET = 0.15


def method_kwargs(method: str, steps: int, batched: str = "auto") -> dict:
    """The training adversary of configs/benchmark-fashion.yaml at K steps."""
    if method == "standard":
        return {}
    if method in ("est", "act", "hm"):
        return {"steps": steps}
    if method == "pgd-at":
        return {"steps": steps, "step_size": STEP_3_255}
    return {"members": 3, "steps": steps, "step_size": STEP_3_255, "batched": batched}


def fast_kwargs(method: str, steps: int | None = None, init: str | None = None, carry_by: str | None = None,
                free_step: bool | None = None) -> dict:
    """The fast training adversary of configs/benchmark-fashion-cpu-fast.yaml; ``steps`` replaces its
    carried steps per visit (the same step size), ``init`` its start (``zero``: from the clean images),
    ``carry_by`` how RobRank's defences keep carried perturbations (``image``: one whatever the role),
    ``free_step`` adds a step after each update up its input gradient."""
    kwargs = dict(read_yaml(FAST)["method_kwargs"].get(method, {}))
    for key, value in (("steps", steps), ("init", init), ("carry_by", carry_by), ("free_step", free_step)):
        if value is not None:
            kwargs[key] = value
    return kwargs


def trainer_for(method: str, kwargs: dict, args, folder: str) -> Trainer:
    cfg = {**read_yaml(RECIPE), "method": method, "method_kwargs": kwargs,
           "root": args.root, "device": args.device, "robust_eval": False, "amp": args.amp,
           "cuda_graphs": args.graphs}
    trainer = Trainer(config_from_dict(cfg), folder, progress=False)
    trainer.model.train()
    trainer.sampler.set_epoch(0)
    return trainer


def epoch_of(seconds: list[float], trainer: Trainer) -> dict:
    step = statistics.median(seconds)
    per_epoch = len(trainer.loader)
    return {"step_s": round(step, 4), "steps_per_epoch": per_epoch, "epoch_s": round(step * per_epoch, 1)}


def measure(method: str, args, tmp: str) -> dict:
    """One method's epoch at K steps; with ``--fast`` (a defence) also its fast adversary's epoch,
    the two trainers' steps alternated on the same batches so that drift hits both."""
    trainers = {"full": trainer_for(method, method_kwargs(method, args.steps, args.eat_batched), args, f"{tmp}/{method}")}
    if args.fast and method != "standard":
        fast = fast_kwargs(method, args.fast_steps, args.fast_init, args.fast_carry_by, args.fast_free or None)  # read once: the adversary timed is the one recorded
        batched = {"batched": args.eat_batched} if method == "eat" else {}
        trainers["fast"] = trainer_for(method, {**fast, **batched}, args, f"{tmp}/{method}-fast")
    batches = list(itertools.islice(iter(trainers["full"].loader), args.warmup + args.batches))
    device = trainers["full"].device
    for images, labels, index in batches[: args.warmup]:
        for trainer in trainers.values():
            trainer.train_step(images, labels, index)
    sync(device)
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for b in batches[args.warmup:]:
        for name, trainer in trainers.items():
            seconds[name].append(timed(lambda t=trainer, b=b: t.train_step(*b), device))
    result = epoch_of(seconds["full"], trainers["full"])
    if "fast" in trainers:
        result["fast"] = {**epoch_of(seconds["fast"], trainers["fast"]), "method_kwargs": fast}
        # both epochs have the loader's steps: the ratio of the median steps, unrounded
        result["F2"] = round(statistics.median(seconds["fast"]) / statistics.median(seconds["full"]), 3)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=32, help="training adversary's PGD steps (default 32, RobRank's)")
    p.add_argument("--batches", type=int, default=6, help="timed steps per method (median taken)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--root", help="Fashion-MNIST folder (default: Debian's dataset-fashion-mnist)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (default off, as RobRank trains in fp32)")
    p.add_argument("--eat-batched", default="auto", choices=("auto", "on", "off"),
                   help="EAT's members in the attack: batched (vmap), a loop, or auto (batched on CUDA)")
    p.add_argument("--graphs", default="off", choices=("auto", "on", "off"),
                   help="the trainer's cuda_graphs: model passes replayed from CUDA graphs (default off, the trainer's)")
    p.add_argument("--fast", action="store_true",
                   help="also time each defence with the fast adversary of configs/benchmark-fashion-cpu-fast.yaml (F2)")
    p.add_argument("--fast-steps", type=int, help="with --fast: carried steps per visit instead of the config's (1)")
    p.add_argument("--fast-init", choices=("carry", "zero"),
                   help="with --fast: where the steps start instead of the config's (carry); zero: the clean images")
    p.add_argument("--fast-carry-by", choices=("role", "image"),
                   help="with --fast, for act and hm: one carried perturbation per role (the config's) or per image")
    p.add_argument("--fast-free", action="store_true",
                   help="with --fast: the free step after each update (free_step: true; carried steps only)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            results[method] = measure(method, args, tmp)
            row = results[method]
            print(f"{method:9s} step {row['step_s']:.4f} s   epoch {row['epoch_s'] / 60:6.2f} min", flush=True)
            if "F2" in row:
                fast = row["fast"]["method_kwargs"]
                print(f"F2{method} {row['F2']:.2f} {F2_TARGET:.2f}      # {fast['steps']} "
                      f"{'carried' if fast.get('init') == 'carry' else 'zero-start'} step(s)"
                      f"{' (one per image)' if fast.get('carry_by') == 'image' else ''}"
                      f"{' + the free step' if fast.get('free_step') else ''}: fast epoch {row['fast']['epoch_s'] / 60:.2f} min, "
                      f"{args.steps}-step {row['epoch_s'] / 60:.2f} min", flush=True)
    base = results.get("standard", {}).get("epoch_s")
    for row in results.values():
        if base:
            row["x_standard"] = round(row["epoch_s"] / base, 1)
    if "eat" in results and "pgd-at" in results:
        print(f"M1 {results['eat']['epoch_s'] / results['pgd-at']['epoch_s']:.2f} (eat epoch / pgd-at epoch, 3 members)")
    device = resolve_device(args.device)
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    info = {"device": machine, "torch": torch.__version__, "adversary_steps": args.steps, "amp": args.amp,
            "cuda_graphs": args.graphs,
            "timed_steps": args.batches, "methods": results}
    print(json.dumps(info, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
