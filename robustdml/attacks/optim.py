"""The optimisers every attack objective runs with, and the threat model's projection.

- ``pgd``: projected gradient ascent with a fixed step (Madry et al., arXiv 1706.06083); returns the
  last iterate.
- ``apgd``: Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
  of diverse parameter-free attacks", arXiv 2003.01690): momentum 0.75, per-sample step size
  starting at 2·eps and halved at checkpoints (first after 22% of the iterations, then ever closer,
  no closer than 6%) when fewer than 75% of the steps since the last checkpoint raised the
  objective or when neither the step size nor the best objective changed; after a halving the
  search restarts from the best point. Returns the best point found.
- ``square``: Square Attack (Andriushchenko et al., arXiv 1912.00049), gradient-free random search:
  square-shaped updates at random positions, accepted where they raise the objective; the square's
  area shrinks on the published schedule from ``p_init`` = 0.8 of the image. The L∞ version is the
  published one; the L2 version is a simplified one (a new random bump in the square, the whole
  perturbation rescaled to the L2 radius) — see docs/design-choices.md.

Both gradient optimisers are one loop, :func:`gradient_ascent`, the only place robustdml takes
gradients with respect to inputs; each step costs one forward and one backward pass through the
model, plus element-wise bookkeeping.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Callable

import torch

from ..models.graphed import input_gradients_only
from .context import Norm

Objective = Callable[[torch.Tensor], torch.Tensor]  # adversarial images (B, ...) -> per-sample objective (B,)
#: called with (iteration, current best perturbation) after each step; for convergence curves
Tracer = Callable[[int, torch.Tensor], None]


class Optimizer(str, Enum):
    PGD = "pgd"
    APGD = "apgd"
    SQUARE = "square"


APGD_MOMENTUM = 0.75
APGD_RHO = 0.75
SQUARE_P_INIT = 0.8


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return _view(t.flatten(1).norm(dim=1), t)


def project(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project ``delta`` onto the eps-ball of ``norm`` and keep ``x + delta`` inside [0, 1]."""
    if norm is Norm.LINF:
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0, 1) - x


def random_start(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random point of the eps-ball (uniform in the L∞ cube; uniform direction and radius for L2)."""
    if norm is Norm.LINF:
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=generator, device=x.device)
        direction = direction / per_sample_norm(direction).clamp_min(1e-12)
        radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device)
        delta = direction * radius * eps
    return project(x, delta, eps, norm)


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations (0-based) after which APGD checks its progress: the published schedule."""
    first, least, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    points, at, gap = [], 0, first
    while at + gap < steps:
        at += gap
        points.append(at)
        gap = max(gap - shrink, least)
    return points


def _ascent_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    return grad.sign() if norm is Norm.LINF else grad / per_sample_norm(grad).clamp_min(1e-12)


def ascent_step(x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, eps: float, norm: Norm,
                step_size: float) -> torch.Tensor:
    """One projected step of ``delta`` up ``grad`` (its sign under L∞, its direction under L2)."""
    return project(x, delta + step_size * _ascent_direction(grad, norm), eps, norm)


def gradient_ascent(objective: Objective, x: torch.Tensor, delta: torch.Tensor, eps: float, norm: Norm, steps: int,
                    step_size: float, adaptive: bool = False, trace: Tracer | None = None,
                    stop_when_flat: bool = False) -> torch.Tensor:
    """Maximise ``objective(x + delta)`` over the ball: PGD (``adaptive=False``, fixed ``step_size``,
    the last iterate) or APGD (``adaptive=True``, ``step_size`` the initial one, the best point).

    The one gradient loop of robustdml: the evaluation's attacks, every training adversary and the
    certificates' EOT attack run it. ``objective`` returns per-sample (or per-row) values whose sum
    is ascended. ``stop_when_flat`` (PGD): stop once that sum changes by less than 1e-7 between two
    steps (RobRank's hardness manipulation does)."""
    step = _gradient_step(objective, x)
    if not adaptive:
        return _pgd(step, x, delta, eps, norm, steps, step_size, trace, stop_when_flat)
    return _apgd(step, objective, x, delta, eps, norm, steps, step_size, trace)


def _gradient_step(objective: Objective, x: torch.Tensor):
    """(objective values, gradient of their sum) at a perturbation: the only input-gradient of robustdml."""
    def value_and_grad(d):
        d = d.detach().requires_grad_(True)
        with input_gradients_only():  # a graphed model pass may then skip the weights' gradients
            value = objective(x + d)
        # a model no gradient passes through (it detaches, say) gets no step: its figures stay the clean
        # ones, and the beats-noise check says so, rather than a crash
        (grad,) = torch.autograd.grad(value.sum(), d, allow_unused=True) if value.requires_grad else (None,)
        return value.detach(), torch.zeros_like(d) if grad is None else grad
    return value_and_grad


def _pgd(value_and_grad, x, delta, eps: float, norm: Norm, steps: int, step_size: float, trace: Tracer | None,
         stop_when_flat: bool) -> torch.Tensor:
    previous = None
    for i in range(steps):
        value, grad = value_and_grad(delta)
        delta = ascent_step(x, delta, grad, eps, norm, step_size)
        if trace:
            trace(i + 1, delta)
        if stop_when_flat:
            current = float(value.sum())
            if previous is not None and abs(current - previous) < 1e-7:
                break
            previous = current
    return delta


def _apgd(value_and_grad, objective: Objective, x, delta, eps: float, norm: Norm, steps: int, step_size: float,
          trace: Tracer | None) -> torch.Tensor:
    checkpoints = set(apgd_checkpoints(steps))
    eta = torch.full((len(x),), float(step_size), device=x.device)
    value, grad = value_and_grad(delta)
    best, best_delta, best_grad = value.clone(), delta.clone(), grad.clone()
    history = [value]
    previous, last_check = delta, 0
    best_at_check, reduced_at_check = best.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(steps):
        momentum = APGD_MOMENTUM if i > 0 else 1.0
        z = project(x, delta + _view(eta, x) * _ascent_direction(grad, norm), eps, norm)
        step = project(x, delta + momentum * (z - delta) + (1 - momentum) * (delta - previous), eps, norm)
        previous, delta = delta, step
        if i + 1 < steps:
            value, grad = value_and_grad(delta)
        else:  # the last point needs its value only
            with torch.no_grad():
                value = objective(x + delta)
        history.append(value)
        better = value > best
        best = torch.where(better, value, best)
        best_delta = torch.where(_view(better, x), delta, best_delta)
        best_grad = torch.where(_view(better, x), grad, best_grad)
        if i + 1 in checkpoints:
            window = torch.stack(history[last_check:])
            rising = (window[1:] > window[:-1]).float().sum(0)
            oscillating = rising <= APGD_RHO * (i + 1 - last_check)
            stalled = ~reduced_at_check & (best_at_check >= best)
            reduce = oscillating | stalled
            eta = torch.where(reduce, eta / 2, eta)
            delta = torch.where(_view(reduce, x), best_delta, delta)
            grad = torch.where(_view(reduce, x), best_grad, grad)
            reduced_at_check, best_at_check, last_check = reduce, best.clone(), i + 1
        if trace:
            trace(i + 1, best_delta)
    return best_delta


def _square_fraction(p_init: float, i: int, steps: int) -> float:
    """The published schedule of the square's area (as a fraction of the image), for ``steps`` queries."""
    it = int(i / max(steps, 1) * 10000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                           (8000, 256)):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


def random_search(objective: Objective, x: torch.Tensor, eps: float, norm: Norm, steps: int,
                  generator: torch.Generator, p_init: float = SQUARE_P_INIT, trace: Tracer | None = None) -> torch.Tensor:
    """Square Attack: ``steps`` queries of the objective (no gradient); returns the best perturbation."""
    b, c, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(shape, generator=generator, device=dev)

    def signs(*shape):
        return (rand(*shape) < 0.5).float() * 2 - 1

    with torch.no_grad():
        if norm is Norm.LINF:
            delta = project(x, eps * signs(b, c, 1, w).expand(b, c, h, w), eps, norm)  # vertical stripes
        else:
            delta = project(x, _rescale(torch.randn((b, c, h, w), generator=generator, device=dev), eps), eps, norm)
        best = objective(x + delta)
        for i in range(1, steps):
            side = max(1, min(h, w, int(round(math.sqrt(_square_fraction(p_init, i, steps) * h * w)))))
            top, left = int(rand(1) * (h - side + 1)), int(rand(1) * (w - side + 1))
            candidate = delta.clone()
            window = candidate[:, :, top:top + side, left:left + side]
            if norm is Norm.LINF:
                window.copy_(eps * signs(b, c, 1, 1).expand_as(window))
            else:
                bump = _bump(side, dev) * signs(b, c, 1, 1)
                scale = window.flatten(2).norm(dim=2).clamp_min(eps / math.sqrt(h * w / side ** 2))
                window.copy_(bump * scale[:, :, None, None])
                candidate = _rescale(candidate, eps)
            candidate = project(x, candidate, eps, norm)
            value = objective(x + candidate)
            better = value > best
            best = torch.where(better, value, best)
            delta = torch.where(_view(better, x), candidate, delta)
            if trace:
                trace(i, delta)
    return delta


def _rescale(delta: torch.Tensor, eps: float) -> torch.Tensor:
    return delta * (eps / per_sample_norm(delta).clamp_min(1e-12))


def _bump(side: int, device) -> torch.Tensor:
    """A unit-norm square bump peaked at its centre (the 1/r² profile of the L2 Square Attack)."""
    r = torch.arange(side, device=device, dtype=torch.float32) - (side - 1) / 2
    profile = 1 / (r[:, None].abs().maximum(r[None, :].abs()) + 1) ** 2
    return profile / profile.norm()
