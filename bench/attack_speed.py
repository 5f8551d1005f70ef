"""P1: a K-step PGD attack on a batch / K x (forward + backward w.r.t. the input) on the same batch.
P5: a K-step APGD attack / the same K-step PGD attack on the same batch (per step: APGD's momentum,
step-size checkpoints and best-point bookkeeping, and its one extra forward for the last point).
P6: an evaluation's attack entry (K-step APGD on digits test images, the evaluation's batches of 256)
against a 3-member ensemble of the digits small CNN with the images in channels-last layout / in
the layout they come in (``EvalSettings.layout``; ``auto`` picks channels-last on a CPU). The
attacks are equally strong (mean displacement within 2%, checked), not bit-identical.
P7: the same entry, both in channels-last layout, crafted on the session's attack copy (BatchNorm
folded, weights channels-last: ``robustdml.models.fused``) / on the model itself; the same check.

The attack adds one no-grad forward for the clean embeddings and the projection arithmetic; the
targets say that must stay within 10% of the passes it cannot avoid.
"""

from __future__ import annotations

import torch

from robustdml.attacks import EmbeddingDisplacement
from robustdml.models import create_model

from common import compare, line

TARGET = 1.10
TARGET_LAYOUT = 0.90
TARGET_FUSED = 0.90


def _entries(device: torch.device, steps: int, images: int) -> tuple:
    """(a 3-member digits ensemble with the statistics of a trained one, digits test images, the attack)."""
    from torch.utils.data import Subset

    from robustdml.data import evaluation_sets
    from robustdml.models import EnsembleNet
    torch.manual_seed(0)
    model = EnsembleNet([create_model("small-cnn", embedding_dim=128, in_channels=1) for _ in range(3)])
    for m in model.modules():  # not the identity BatchNorm of a fresh network
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    query, _ = evaluation_sets("digits")
    return (model.to(device).eval(), Subset(query, range(min(images, len(query)))),
            EmbeddingDisplacement(eps=0.1, steps=steps, optimizer="apgd"))


def _entry_ratio(name: str, sessions: dict, attack, device: torch.device) -> tuple[float, dict]:
    """Time of the attack entry in the first session / in the second, and their mean displacements."""
    found = {}
    first, second = sessions

    def entry(key):
        return lambda: found.__setitem__(key, sessions[key].attack(attack)[0])
    t_first, t_second = compare(entry(first), entry(second), device)
    # the sums run in another order, and a sign step flipped by the last bit sends an image another
    # way: the attacks are equally strong, not bit-identical; their mean displacement is compared
    clean = sessions[second].clean_emb
    moved = {k: float(1 - (e * clean).sum(1).mean()) for k, e in found.items()}
    if abs(moved[first] / moved[second] - 1) > 0.02:
        raise SystemExit(f"{name}: {first} and {second} gave attacks of other strength (mean displacement {moved})")
    return t_first / t_second, {f"{first}_s": round(t_first, 3), f"{second}_s": round(t_second, 3),
                                "mean_displacement": moved}


def _unfused():
    from robustdml.evaluation.session import EvaluationSession

    class Unfused(EvaluationSession):  # the attacks differentiate through the model itself
        attack_model = property(lambda self: self.model)
    return Unfused


def _layout_ratio(device: torch.device, steps: int, images: int) -> tuple[float, dict]:
    from robustdml.evaluation.session import EvalSettings
    model, data, attack = _entries(device, steps, images)
    sessions = {layout: _unfused()(model, data, settings=EvalSettings(device=device, layout=layout))
                for layout in ("channels-last", "as-given")}
    ratio, details = _entry_ratio("P6", sessions, attack, device)
    return ratio, {**details, "images": len(data), "steps": steps}


def _fused_ratio(device: torch.device, steps: int, images: int) -> tuple[float, dict]:
    from robustdml.evaluation.session import EvalSettings, EvaluationSession
    model, data, attack = _entries(device, steps, images)
    settings = EvalSettings(device=device, layout="channels-last")
    sessions = {"fused": EvaluationSession(model, data, settings=settings), "model": _unfused()(model, data, settings=settings)}
    ratio, details = _entry_ratio("P7", sessions, attack, device)
    return ratio, {**details, "images": len(data), "steps": steps}


def run(device: torch.device, steps: int = 10, batch: int = 32, size: int = 64) -> tuple[list[str], dict]:
    torch.manual_seed(0)
    model = create_model("resnet18", embedding_dim=512, pretrained=False).to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device)
    pgd = EmbeddingDisplacement(eps=8 / 255, steps=steps)
    apgd = EmbeddingDisplacement(eps=8 / 255, steps=steps, optimizer="apgd")

    def bare():
        for _ in range(steps):
            xi = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xi).sum(), xi)
        return g

    t_attack, t_bare = compare(lambda: pgd(model, x), bare, device)
    t_apgd, t_pgd = compare(lambda: apgd(model, x), lambda: pgd(model, x), device)
    details = {"model": "resnet18", "batch": batch, "image": size, "steps": steps,
               "attack_s": round(t_attack, 4), "bare_s": round(t_bare, 4),
               "apgd_s": round(t_apgd, 4), "pgd_s": round(t_pgd, 4)}
    images = 896 if batch >= 32 else 256
    layout, details["P6"] = _layout_ratio(device, steps, images)
    fused, details["P7"] = _fused_ratio(device, steps, images)
    return [line("P1", t_attack / t_bare, TARGET), line("P5", t_apgd / t_pgd, TARGET),
            line("P6", layout, TARGET_LAYOUT), line("P7", fused, TARGET_FUSED)], details
