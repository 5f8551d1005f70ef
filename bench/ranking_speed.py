"""R1: RobRank's rob28 suite per query on c2f2 (its nine attacks on one batch of 32 queries against
a 10,000-item database: set-up, 32 PGD steps each, the adversarial embeddings and the reported
numbers) / 32 x 10 bare forward + backward passes of the same batch.

What the suite cannot avoid is one pass per step and attack; the distances to the database (every
step of the query attacks), the targets' set-up and the scoring must stay within the 1.5 the
target allows.

R2: our c2f2 (max-pool before ReLU, no average pool on a 7x7 map) / RobRank's layer order (ReLU,
max-pool, then the pool to 7x7) with the same weights: a training step (forward + backward to the
weights) plus an attack step (forward + backward to the input) on a pair batch of 256 Fashion-sized
images. Both must give bit-identical embeddings and gradients, or the benchmark stops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustdml.attacks import AttackContext, create_attack
from robustdml.attacks.ranking import PROFILES, ranking_attacks
from robustdml.models import create_model

from common import compare, line

TARGET = 1.50
TARGET_ORDER = 1.00


def run(device: torch.device, batch: int = 32, database: int = 10_000) -> tuple[list[str], dict]:
    torch.manual_seed(0)
    model = create_model("c2f2", embedding_dim=512, in_channels=1, pretrained=False).to(device).eval()
    x = torch.rand(batch, 1, 28, 28, device=device)
    gallery = F.normalize(torch.randn(database, 512), dim=1)
    gallery_labels = torch.randint(10, (database,))
    profile = PROFILES["rob28"]
    attacks = [create_attack(name, profile["eps"], steps=profile["steps"], step_size=profile["step_size"])
               for name in ranking_attacks()]
    context = AttackContext(labels=torch.randint(10, (batch,)), gallery=gallery, gallery_labels=gallery_labels,
                            self_index=torch.arange(batch), targets=torch.randint(database, (batch,)))
    with torch.no_grad():
        clean = model(x).cpu()

    def suite():
        for attack in attacks:
            adversarial = model(attack(model, x, context)).detach().cpu()
            attack.score(adversarial, clean, context)

    def bare():
        for _ in range(profile["steps"] * 10):
            xi = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xi).sum(), xi)
        return g

    t_suite, t_bare = compare(suite, bare, device, repeats=2)
    details = {"model": "c2f2", "batch": batch, "database": database, "attacks": len(attacks),
               "steps": profile["steps"], "suite_s": round(t_suite, 3), "bare_s": round(t_bare, 3),
               "suite_ms_per_query": round(1000 * t_suite / batch, 2)}
    figure, details["layer_order"] = layer_order(device)
    return [line("R1", t_suite / t_bare, TARGET), figure], details


class RobRanksOrder(torch.nn.Module):
    """The same network (same parameters) with RobRank's layer order: conv, ReLU, max-pool, ..., and the
    adaptive pool to 7x7 that is an identity on 28x28 inputs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        conv1, pool1, relu1, conv2, pool2, relu2, _, *rest = model.backbone
        self.normalize, self.embedding = model.normalize, model.embedding
        self.body = torch.nn.Sequential(conv1, relu1, pool1, conv2, relu2, pool2, torch.nn.AdaptiveAvgPool2d(7), *rest)

    def forward(self, x):
        return F.normalize(self.embedding(self.body(self.normalize(x))), dim=1)


def layer_order(device: torch.device, batch: int = 256) -> tuple[str, dict]:
    torch.manual_seed(0)
    ours = create_model("c2f2", embedding_dim=512, in_channels=1, pretrained=False).to(device).train()
    theirs = RobRanksOrder(ours)
    x = torch.rand(batch, 1, 28, 28, device=device)
    x[:, :, :4] = 0  # a blank band, as Fashion-MNIST's background: ties inside max-pool windows

    def step(net):
        """A training step's gradients and an attack step's input gradient (the loss pulls pairs together)."""
        net.zero_grad()
        e = net(x)
        (e[0::2] * e[1::2]).sum().backward()
        xi = x.detach().requires_grad_(True)
        e = net(xi)
        (g,) = torch.autograd.grad((e[0::2] * e[1::2]).sum(), xi)
        return [g] + [p.grad.clone() for p in ours.parameters()]  # shared by both, in one order

    with torch.no_grad():
        same = torch.equal(ours(x), theirs(x))
    same = same and all(torch.equal(a, b) for a, b in zip(step(ours), step(theirs)))
    if not same:
        raise SystemExit("R2: c2f2 and RobRank's layer order disagree; the reordering is not exact")
    t_ours, t_theirs = compare(lambda: step(ours), lambda: step(theirs), device, repeats=9)
    return line("R2", t_ours / t_theirs, TARGET_ORDER), {
        "batch": batch, "identical": same, "ours_s": round(t_ours, 4), "robranks_order_s": round(t_theirs, 4)}


if __name__ == "__main__":
    print(run(torch.device("cpu")))
