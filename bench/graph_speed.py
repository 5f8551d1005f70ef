"""G2: a defended C2F2 training step (pgd-at, RobRank's Fashion-MNIST shapes: batch 128 of 28x28
grey images, the K-step adversary) with its model passes replayed from CUDA graphs
(robustdml.models.graphed, `cuda_graphs: on` or `auto`) / the same step eager; M1g: a 3-member `eat` step /
a `pgd-at` step, both graphed (the members one after the other, each behind its own graphs).

    python bench/graph_speed.py                 # on a CUDA device; K = 32
    python bench/graph_speed.py --steps 4       # quicker

Each step runs as ``Trainer.train_step`` does: the method's loss on the (graphed) model, backward,
AdamW. Both sides train from the same seed on the same batch. Needs a CUDA device: elsewhere it
prints ``G2 skipped`` (the trainer trains eagerly there)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import compare, line, print_figures  # noqa: E402

from robustdml.attacks import ThreatModel  # noqa: E402
from robustdml.attacks.context import Norm  # noqa: E402
from robustdml.engine.trainer import adamw  # noqa: E402
from robustdml.losses import create_loss  # noqa: E402
from robustdml.methods import create_method  # noqa: E402
from robustdml.methods.base import TrainingSetup  # noqa: E402
from robustdml.models import create_model  # noqa: E402
from robustdml.models.graphed import begin_step, graph_count, graphed_view  # noqa: E402

TARGET_G2 = 4.0
TARGET_M1 = 3.2
EPS = 77 / 255  # RobRank's L∞ budget for 28x28 images


def _step(device: torch.device, method_name: str, graphed: bool, steps: int, batch: int, **method_kwargs):
    torch.manual_seed(0)
    method = create_method(method_name, steps=steps, step_size=EPS / 4, **method_kwargs)
    model = method.build_model(lambda: create_model("c2f2", embedding_dim=512, in_channels=1)).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    criterion = method.build_criterion(lambda: create_loss("proxy_anchor", num_classes=5, embedding_dim=512)).to(device)
    method.setup(TrainingSetup(num_samples=batch, seed=0, threat=ThreatModel(EPS, Norm.LINF)))
    params = list(model.parameters()) + list(criterion.parameters())
    optimizer = adamw(params, device, lr=1e-3)
    view = graphed_view(model) if graphed else model
    x = torch.rand(batch, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch, device=device) % 5
    index = torch.arange(batch)

    def step():
        begin_step(view)
        loss = method.loss(view, criterion, x, y, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, view


def run(device: torch.device, steps: int = 32, batch: int = 128, repeats: int = 5) -> tuple[list[str], dict]:
    if device.type != "cuda":
        return ["G2 skipped (needs a CUDA device)", "M1g skipped (needs a CUDA device)"], {
            "note": "CUDA graphs need a CUDA device; training runs eagerly elsewhere"}
    torch.backends.cudnn.benchmark = True
    graphed, view = _step(device, "pgd-at", True, steps, batch)
    eager, _ = _step(device, "pgd-at", False, steps, batch)
    for _ in range(3):  # every kind of pass seen twice: captured
        graphed()
    t_eager, t_graphed = compare(eager, graphed, device, repeats=repeats)
    eat, eat_view = _step(device, "eat", True, steps, batch, members=3, split="none")
    for _ in range(3):
        eat()
    t_eat, t_pgd = compare(eat, graphed, device, repeats=repeats)
    details = {"device": torch.cuda.get_device_name(device), "model": "c2f2, 28x28x1, Proxy Anchor", "batch": batch,
               "attack_steps": steps, "eager_step_s": round(t_eager, 5), "graphed_step_s": round(t_graphed, 5),
               "graphs": graph_count(view), "eat_graphed_step_s": round(t_eat, 5), "eat_graphs": graph_count(eat_view),
               "eat_split": "none (every member on the whole batch: fixed shapes)"}
    return [line("G2", t_eager / t_graphed, TARGET_G2), line("M1g", t_eat / t_pgd, TARGET_M1)], details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=32, help="adversary steps K")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lines, details = run(device, args.steps, args.batch, args.repeats)
    return print_figures(lines, details)


if __name__ == "__main__":
    raise SystemExit(main())
