"""CUDA graphs for the model passes of a training step.

On a GPU a small network's defended training step is bound by kernel launches, not arithmetic: a
C2F2 forward and backward is a few dozen short kernels, and an adversary repeats it every step.
:class:`GraphedModule` replays each pass from a CUDA graph (``torch.cuda.make_graphed_callables``:
one launch for the forward, one for the backward) and falls back to the module's own forward
wherever a graph would be wrong or cannot be made:

* one graph pair per *kind* of call — input shape, dtype and layout, whether the input needs a
  gradient, train or eval mode, autocast, which parameters train, and whether the call is an
  attack's (only the input's gradient is wanted: :func:`input_gradients_only`, whose graphs skip
  the weights' gradients) — made the second time a kind is seen (a one-off such as the last
  batch of an epoch is not worth capturing), at most ``max_graphs`` of them;
* eager on the CPU, without gradients (or where no gradient will be taken through the pass), and
  for a call of a kind whose previous replay still waits for its backward (a graph's activations
  live in fixed memory: replaying it again before the backward would overwrite what that
  backward needs);
* every output is copied out of the graph's fixed memory, so what a caller keeps stays its own;
* capturing runs the module a few times (warm-up): BatchNorm's running statistics are put back
  afterwards, so that training sees exactly the passes it would have run eagerly;
* a failed capture (an operation a graph cannot hold) is logged once and the module runs eagerly
  from then on.

The wrapper holds the module; the module itself is not changed (its ``forward``, hooks and saved
weights stay its own), so the model that is saved, evaluated or copied is the plain one. Gradients
that need a second derivative (``create_graph=True``) are not supported by graphed passes: a method
that takes them trains eagerly (:attr:`~robustdml.methods.base.TrainingMethod.graphable`).

>>> step_model = graphed_view(model)          # pass this to the method's loss; save ``model``
>>> begin_step(step_model)                    # at the start of every training step
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

_state = threading.local()
_warned: set[str] = set()


@contextlib.contextmanager
def input_gradients_only():
    """Mark the model calls inside as an attack's: only the input's gradient will be taken."""
    before = getattr(_state, "input_only", False)
    _state.input_only = True
    try:
        yield
    finally:
        _state.input_only = before


def _input_only() -> bool:
    return getattr(_state, "input_only", False)


def capture_cuda(module: nn.Module, sample: torch.Tensor, input_only: bool) -> Callable:
    """The forward of ``module`` on inputs like ``sample``, replayed from a CUDA graph (and its
    backward from another). ``module`` is left as it was: its forward, buffers and parameters'
    ``requires_grad``."""
    frozen = [p for p in module.parameters() if p.requires_grad] if input_only else []
    for p in frozen:
        p.requires_grad_(False)  # the graph's backward then computes the input's gradient alone
    try:
        graphed = torch.cuda.make_graphed_callables(module, (sample,))
        forward = graphed.forward
    finally:
        module.__dict__.pop("forward", None)  # make_graphed_callables set the module's forward: undo it
        for p in frozen:
            p.requires_grad_(True)
    return forward


class GraphedModule(nn.Module):
    """``module``'s training passes replayed from CUDA graphs where that gives the same results
    (see the module's docstring); ``capture`` makes one graphed forward, for inputs on ``devices``
    (the tests pass a stand-in that runs on the CPU)."""

    def __init__(self, module: nn.Module, max_graphs: int = 16, capture: Callable = capture_cuda,
                 devices: tuple[str, ...] = ("cuda",)):
        super().__init__()
        self.module = module
        self.max_graphs, self.capture, self.devices = int(max_graphs), capture, tuple(devices)
        self.graphs: dict[tuple, Callable] = {}
        self.seen: Counter = Counter()
        self.pending: set[tuple] = set()
        self.failed = False

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)  # head_parameters, spec, ...

    def key(self, x: torch.Tensor) -> tuple | None:
        """The kind of call ``x`` makes, or None where it runs eagerly."""
        if self.failed or x.device.type not in self.devices or not torch.is_grad_enabled():
            return None
        trains = tuple(p.requires_grad for p in self.module.parameters())
        input_only = _input_only()
        if not x.requires_grad and (input_only or not any(trains)):
            return None  # no gradient will be taken through this pass: nothing for a backward graph to do
        autocast = torch.is_autocast_enabled("cuda")
        return (tuple(x.shape), x.dtype, x.stride(), x.requires_grad, self.module.training, input_only, autocast,
                torch.get_autocast_dtype("cuda") if autocast else None, trains)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = self.key(x)
        if key is None or key in self.pending:
            return self.module(x)
        graphed = self.graphs.get(key)
        if graphed is None:
            self.seen[key] += 1
            if self.seen[key] < 2 or len(self.graphs) >= self.max_graphs:
                return self.module(x)
            graphed = self._capture(key, x, input_only=_input_only())
            if graphed is None:
                return self.module(x)
        out = graphed(x)
        if out.requires_grad:
            self.pending.add(key)
            out.register_hook(lambda grad, key=key: self._released(key, grad))
        return out.clone()

    def _capture(self, key: tuple, x: torch.Tensor, input_only: bool) -> Callable | None:
        buffers = [b.detach().clone() for b in self.module.buffers()]
        sample = x.detach().clone().requires_grad_(x.requires_grad)
        try:
            graphed = self.capture(self.module, sample, input_only)
        except Exception as error:  # noqa: BLE001 - any failure to capture means: run eagerly
            self.failed = True
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            if reason not in _warned:  # once, not once per ensemble member
                _warned.add(reason)
                log.warning("CUDA graph capture failed (%s); these passes run eagerly", reason)
            return None
        finally:
            with torch.no_grad():
                for b, saved in zip(self.module.buffers(), buffers):
                    b.copy_(saved)  # the warm-up's passes must not count as training
        self.graphs[key] = graphed
        return graphed

    def _released(self, key: tuple, grad: torch.Tensor) -> torch.Tensor:
        self.pending.discard(key)
        return grad

    def begin_step(self) -> None:
        """A new training step: no replay of the last one still waits for a backward."""
        self.pending.clear()


def graphed_view(model: nn.Module, **options) -> nn.Module:
    """The model as a training step should call it: each member of an ensemble (or the model)
    behind a :class:`GraphedModule`, the parameters shared with ``model``."""
    from .embedding import EnsembleNet

    if isinstance(model, EnsembleNet):
        return EnsembleNet([GraphedModule(m, **options) for m in model.members], combine=model.combine)
    return GraphedModule(model, **options)


def graphed_modules(model: nn.Module) -> list[GraphedModule]:
    return [m for m in model.modules() if isinstance(m, GraphedModule)]


def begin_step(model: nn.Module) -> None:
    """Start a training step on a :func:`graphed_view`."""
    for m in graphed_modules(model):
        m.begin_step()


def graph_count(model: nn.Module) -> int:
    """How many graph pairs the view's modules hold."""
    return sum(len(m.graphs) for m in graphed_modules(model))
