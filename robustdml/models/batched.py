"""An ensemble's members run as one batched module.

An :class:`~robustdml.models.embedding.EnsembleNet` calls its members one after the other: N small
networks are N times the kernel launches, which on a GPU is most of the cost of attacking a small
ensemble. When the members share one architecture their weights can be stacked
(``torch.func.stack_module_state``) and the N forward passes run as one ``vmap`` over the stack —
the same arithmetic, one launch per layer.

:class:`BatchedEnsemble` is a snapshot of the members' weights taken when it is built, for use
while they do not change (an attack, or evaluation); it runs in eval mode only, because vmapped
BatchNorm cannot update running statistics.

    batched = BatchedEnsemble(ensemble)          # ensemble: an EnsembleNet
    embedding = batched(images)                  # == ensemble(images) in eval mode
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .embedding import EnsembleNet


def can_batch(ensemble: nn.Module) -> bool:
    """Whether an ensemble's members have one architecture: the same parameter and buffer names,
    shapes and dtypes, and the same module types."""
    if not isinstance(ensemble, EnsembleNet) or len(ensemble.members) < 2:
        return False

    def signature(m: nn.Module):
        tensors = list(m.named_parameters()) + list(m.named_buffers())
        return ([(n, t.shape, t.dtype, t.device) for n, t in tensors], [type(s) for s in m.modules()])

    first = signature(ensemble.members[0])
    return all(signature(m) == first for m in ensemble.members[1:])


class BatchedEnsemble(nn.Module):
    """``ensemble``'s members as one vmapped module, with its weights as they are now.

    Args:
        ensemble: an ``EnsembleNet`` whose members share one architecture (:func:`can_batch`).

    ``forward(x)`` gives the ensemble embedding (B, D) exactly as ``ensemble(x)`` does in eval mode;
    :meth:`stacked` gives the members' embeddings (N, B, D). Gradients flow to the input; the
    stacked weights are detached (an attack needs no weight gradients).
    """

    def __init__(self, ensemble: EnsembleNet):
        super().__init__()
        if not can_batch(ensemble):
            raise ValueError("the members of this ensemble do not share one architecture; run them in a loop")
        params, buffers = stack_module_state(list(ensemble.members))
        self._params = {k: v.detach() for k, v in params.items()}
        self._buffers_ = {k: v.detach() for k, v in buffers.items()}
        # a weightless copy of one member gives the computation; the stack gives the weights
        self.base = copy.deepcopy(ensemble.members[0]).to("meta").eval()
        self.combine = ensemble.combine

    def stacked(self, x: torch.Tensor) -> torch.Tensor:
        """The members' embeddings, (N, B, D)."""
        if self.training:
            raise RuntimeError("BatchedEnsemble runs in eval mode only (vmapped BatchNorm cannot update its statistics)")

        def one(params, buffers, images):
            return functional_call(self.base, (params, buffers), (images,))

        return vmap(one, in_dims=(0, 0, None))(self._params, self._buffers_, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.stacked(x)
        joined = outs.mean(0) if self.combine == "mean" else outs.permute(1, 0, 2).reshape(x.shape[0], -1)
        return F.normalize(joined, dim=1)
