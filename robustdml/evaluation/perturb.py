"""The one loop that perturbs a session's test pool a batch at a time: this process's share of the
batches under ``torchrun`` (:mod:`.shards`), the batches already on disk read back instead
(:mod:`.store`), and the passes through the model counted.

A batch's piece is ``{"emb": adversarial embeddings, "trace<I>": embeddings at iteration I, and in
batch 0 "clean", "adv": the first images}``; :func:`joined` puts the pieces together.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from ..attacks import Attack
from ..models import EnsembleNet
from .store import EntryFiles, Part

if TYPE_CHECKING:
    from .session import EvaluationSession


def perturb_pool(session: "EvaluationSession", attack: Attack, desc: str, samples: int, victim: nn.Module,
                 trace_at: tuple[int, ...], saved: EntryFiles | None):
    """:meth:`EvaluationSession.attack`: (adversarial embeddings, first images, traced embeddings)."""
    targets = session.plan(attack)
    parts: dict[int, Part] = {}
    crafted_on = session.attack_model
    with _counting(session, crafted_on), _tracing(attack), channels_last_inputs(session, crafted_on):
        for number, (images, labels, index) in _shard_batches(session, saved, parts, desc):
            part = parts[number] = {}
            attack.trace = _tracer(victim, images, part, trace_at) if trace_at else None
            x_adv = attack(crafted_on, images, session.context(labels, index, targets))
            with torch.no_grad():
                part["emb"] = victim(x_adv).float().cpu()
            if number == 0 and samples:
                part.update(clean=images[:samples].cpu(), adv=x_adv[:samples].cpu())
            if saved is not None:
                saved.save_batch(number, part)
    return joined(session.shards.gather_parts(parts), trace_at)


def joined(parts: dict[int, Part], trace_at: tuple[int, ...] = ()):
    """The batches' pieces (batch number -> piece) as (embeddings, (clean, adversarial) first
    images, {iteration: embeddings})."""
    ordered = [parts[b] for b in sorted(parts)]
    first = (ordered[0]["clean"], ordered[0]["adv"]) if ordered and "clean" in ordered[0] else (None, None)
    traced = {i: torch.cat([p[f"trace{i}"] for p in ordered]) for i in trace_at if f"trace{i}" in ordered[0]}
    return torch.cat([p["emb"] for p in ordered]), first, traced


def piece(emb: torch.Tensor, first: tuple, traced: dict) -> Part:
    """Whole-pool results as one piece (the inverse of :func:`joined` on a single piece)."""
    part = {"emb": emb, **{f"trace{i}": e for i, e in traced.items()}}
    if first[0] is not None:
        part.update(clean=first[0], adv=first[1])
    return part


def _shard_batches(session: "EvaluationSession", saved: EntryFiles | None, parts: dict, desc: str):
    """(batch number, batch) of this process's share of the pool's batches (batch ``b`` to process
    ``b mod K``) that ``saved`` does not hold already (those go into ``parts``, unread from the data)."""
    size, n = session.settings.batch_size, len(session.pool)
    todo = []
    for number in session.shards.batches(n, size):
        found = saved.batch(number) if saved is not None else None
        if found is None:
            todo.append(number)
        else:
            parts[number] = found
    positions = np.concatenate([np.arange(b * size, min((b + 1) * size, n)) for b in todo]) if todo else []
    yield from zip(todo, session.batches(positions, desc=desc))


def _networks(model: nn.Module) -> list[nn.Module]:
    """The networks an image passes through: an ensemble's members (which the reweighted objective
    calls directly), else the model."""
    return list(model.members) if isinstance(model, EnsembleNet) else [model]


@contextmanager
def _hooked(model: nn.Module, **hooks):
    """Hooks (``forward=``, ``forward_pre=``) on the model's networks while the attack runs; the
    model is given back without them, its parameters and buffers untouched."""
    handles = [getattr(net, f"register_{kind}_hook")(hook) for net in _networks(model) for kind, hook in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _counting(session: "EvaluationSession", model: nn.Module):
    """Count the images passed through ``model`` in ``session.forwards`` (an ensemble: through its
    members, divided by their number)."""
    members = len(_networks(model))

    def count(module, inputs, output) -> None:
        session.count_forwards(len(inputs[0]) / members)
    return _hooked(model, forward=count)


def channels_last_inputs(session: "EvaluationSession", model: nn.Module):
    """Every image batch into the networks in channels-last layout where the session asks for it
    (``EvalSettings.layout``): a copy per pass, differentiable, so the attack's own tensors keep
    whatever layout they have."""
    if session.attack_layout != "channels-last":
        return nullcontext()

    def to_channels_last(module, inputs):
        x = inputs[0]
        return (x.to(memory_format=torch.channels_last), *inputs[1:]) if x.dim() == 4 else None
    return _hooked(model, forward_pre=to_channels_last)


@contextmanager
def _tracing(attack: Attack):
    try:
        yield
    finally:
        attack.trace = None


def _tracer(victim: nn.Module, images: torch.Tensor, part: dict,
            trace_at: tuple[int, ...]) -> Callable[[int, torch.Tensor], None]:
    def record(iteration: int, delta: torch.Tensor) -> None:
        if iteration in trace_at:
            with torch.no_grad():
                part[f"trace{iteration}"] = victim(images + delta).float().cpu()
    return record
