"""R1: RobRank's rob28 suite per query on c2f2 (its nine attacks on one batch of 32 queries against
a 10,000-item database: set-up, 32 PGD steps each, the adversarial embeddings and the reported
numbers) / 32 x 10 bare forward + backward passes of the same batch.

What the suite cannot avoid is one pass per step and attack; the distances to the database (every
step of the query attacks), the targets' set-up and the scoring must stay within the 1.5 the
target allows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustdml.attacks import AttackContext, create_attack
from robustdml.attacks.ranking import PROFILES, RANKING_ATTACKS
from robustdml.models import create_model

from common import compare, line

TARGET = 1.50


def run(device: torch.device, batch: int = 32, database: int = 10_000) -> tuple[list[str], dict]:
    torch.manual_seed(0)
    model = create_model("c2f2", embedding_dim=512, in_channels=1, pretrained=False).to(device).eval()
    x = torch.rand(batch, 1, 28, 28, device=device)
    gallery = F.normalize(torch.randn(database, 512), dim=1)
    gallery_labels = torch.randint(10, (database,))
    profile = PROFILES["rob28"]
    attacks = [create_attack(name, profile["eps"], steps=profile["steps"], step_size=profile["step_size"])
               for name in RANKING_ATTACKS]
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
    return [line("R1", t_suite / t_bare, TARGET)], details


if __name__ == "__main__":
    print(run(torch.device("cpu")))
