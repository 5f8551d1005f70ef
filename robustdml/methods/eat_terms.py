"""The extra loss terms of EAT's readings of self-transfer (docs/eat.md): distillation towards the
ensemble and the gradient-alignment diversity penalty. Both are ours as readings of the EAT paper
(arXiv 2501.01025), each following the source named in its docstring.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..models.modes import eval_mode


def ensemble_target(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The ensemble's embedding of ``images`` as a fixed target: no gradient, and in eval mode so that
    computing it moves no BatchNorm statistic."""
    with torch.no_grad(), eval_mode(model):
        return model(images)


def distillation(embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance ``1 - cos`` between a member's unit embeddings (B, D) and the ensemble's
    (B, D) — RSLAD's robust soft labels (Zi et al., "Revisiting Adversarial Robustness
    Distillation", arXiv 2108.07969) carried over to embeddings."""
    return (1 - (embedding * target).sum(1)).mean()


def input_gradients(members: nn.ModuleList, criterion: nn.ModuleList, images: torch.Tensor,
                    labels: torch.Tensor) -> list[torch.Tensor]:
    """Each member's loss gradient w.r.t. the clean images, kept in the graph (double backward)."""
    x = images.detach().requires_grad_(True)
    return [torch.autograd.grad(loss(member(x), labels), x, create_graph=True)[0]
            for member, loss in zip(members, criterion)]


def gradient_cosines(gradients: list[torch.Tensor]) -> torch.Tensor:
    """Per pair of members a < b, the mean over samples of cos(∇x J_a, ∇x J_b): (pairs,)."""
    flat = [g.flatten(1) for g in gradients]
    return torch.stack([torch.cosine_similarity(a, b, dim=1, eps=1e-12).mean()
                        for a, b in itertools.combinations(flat, 2)])


def gradient_alignment(members: nn.ModuleList, criterion: nn.ModuleList, images: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """The GAL penalty of Kariyappa & Qureshi ("Improving Adversarial Robustness of Ensembles with
    Diversity Training", arXiv 1901.09981): log Σ_{a<b} exp(cos(∇x J_a, ∇x J_b)), the members'
    input gradients of their own losses on the clean batch, so that one perturbation is unlikely to
    raise every member's loss at once."""
    return torch.logsumexp(gradient_cosines(input_gradients(members, criterion, images, labels)), 0)
