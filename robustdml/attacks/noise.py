"""Uniform noise of the attack's budget: the floor any real attack must beat. Uses no gradient."""

from __future__ import annotations

import torch

from .base import Attack
from .context import Norm
from .optim import per_sample_norm, project
from .registry import register_attack


@register_attack
class UniformNoise(Attack):
    """L∞: uniform in [-eps, eps] per pixel. L2: a uniform direction at radius eps."""

    name = "noise"
    white_box = False

    def objective(self, embeddings, state):  # pragma: no cover - never optimised
        return torch.zeros(len(embeddings), device=embeddings.device)

    def perturb(self, model, x, state, context):
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        if self.norm is Norm.LINF:
            delta = (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * self.eps
        else:
            delta = torch.randn(x.shape, generator=g, device=x.device)
            delta = delta / per_sample_norm(delta).clamp_min(1e-12) * self.eps
        return x + project(x, delta, self.eps, self.norm)
