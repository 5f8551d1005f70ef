"""Multi-process training with torch.distributed: one process per GPU under ``torchrun`` (NCCL), or
several CPU processes (gloo). The same code runs single-process when no launcher set WORLD_SIZE.

Each rank takes its slice of every global batch; the loss is computed on the *global* batch (the
embeddings are gathered with gradient), so Proxy Anchor sees the same batch as in one process; the
gradients are averaged across ranks after backward, so weights and proxies stay identical. The
floating-point buffers (BatchNorm running statistics) are averaged after every step too, so every
rank's model in eval mode — the attack's and the evaluation's — is the same model. Evaluation embeds
its share of the test set's batches on each rank (:func:`robustdml.evaluation.embed`) and rank 0
computes the metrics.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from ..errors import ConfigError

# Rank 0 alone computes the metrics (k-means, kNN) and the robust validation while the other ranks
# wait in a collective; the default 10-minute timeout is too short for a large test set.
TIMEOUT = timedelta(hours=2)


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    signal.signal(signal.SIGTERM, _stopped_by_launcher)
    return dist.get_rank(), dist.get_world_size(), local


def _stopped_by_launcher(signum, frame) -> None:
    """torchrun stops the other processes when one fails: say so in one line, not a traceback.
    Everything written so far was written atomically (checkpoints, finished evaluation pieces)."""
    print(f"robustdml: error: process {os.environ.get('RANK', '?')} stopped: another process of this torchrun launch "
          "failed; what was finished is kept: run the same command again to continue", file=sys.stderr, flush=True)
    os._exit(1)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def finish_distributed() -> None:
    """Wait for every rank, then close the process group (nothing to do in a single process).

    A rank that exits with the group still open can abort (SIGABRT) while Python shuts down, as
    gloo's threads still hold tensors; torchrun then stops the other ranks, rank 0 perhaps before it
    has written its results. Call it once a command's work is done, not after an error (the other
    ranks might never reach the barrier)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank r's contiguous slice of each global batch of ``sampler`` (every rank draws the same
    global batches from the same seed)."""

    def __init__(self, sampler, rank: int, world: int):
        if sampler.batch_size % world:
            raise ConfigError(f"batch_size {sampler.batch_size} must be divisible by the number of processes ({world})")
        self.sampler, self.rank, self.world = sampler, rank, world
        self.per_rank = sampler.batch_size // world

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield batch[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]


class _AllGather(torch.autograd.Function):
    """All ranks' ``x`` concatenated; backward sums the ranks' gradients of the whole and returns
    this rank's slice (its samples' gradient through every rank's copy of the loss)."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, keeping the gradient path to each rank's own part.
    Every rank's ``x`` has the same shape: :class:`ShardedBatchSampler` gives equal slices, so no
    sizes are exchanged (which would cost a host synchronisation per step)."""
    return _AllGather.apply(x.contiguous())


class GatheredLoss(nn.Module):
    """Computes ``loss`` on the embeddings and labels of all ranks together."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not dist.is_initialized():
            return self.loss(embeddings, labels)
        return self.loss(gather_with_grad(embeddings), gather_with_grad(labels))


def distributed_criterion(criterion: nn.Module) -> nn.Module:
    """Wrap a loss (or each loss of a ModuleList) so it sees the global batch."""
    if isinstance(criterion, nn.ModuleList):
        return type(criterion)([GatheredLoss(c) for c in criterion])
    return GatheredLoss(criterion)


def average_gradients(parameters) -> None:
    """All-reduce the mean gradient of every trainable parameter, in one flat buffer. A parameter
    without a gradient on this rank (e.g. an ensemble member with no sample here) counts as zero.

    Every rank computed the same global loss and got the gradient through its own samples only
    (the gather's backward sums the ranks' copies), so the mean over ranks is the global gradient."""
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p, mean in zip(params, _mean_across_ranks(grads)):
        p.grad = mean.clone()


def average_buffers(modules) -> None:
    """All-reduce the mean of every floating-point buffer (BatchNorm running mean and variance), in
    one flat buffer; integer buffers (batch counters) are equal on every rank already."""
    buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if buffers:
        for b, mean in zip(buffers, _mean_across_ranks(buffers)):
            b.copy_(mean)


def _mean_across_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean over ranks of each tensor, by one all-reduce of one flat buffer; views into it."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def assert_in_sync(modules) -> None:
    """Raise if any rank's parameters or buffers differ from rank 0's (checked after every step when
    ``check_sync`` is on)."""
    flat = torch.cat([t.detach().reshape(-1).double() for m in modules
                      for t in (*m.parameters(), *m.buffers())])
    stats = torch.stack([flat.sum(), (flat * flat).sum(), (flat * torch.arange(len(flat), dtype=flat.dtype,
                                                                                device=flat.device) % 7).sum()])
    gathered = [torch.zeros_like(stats) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, stats)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"ranks out of sync: parameter and buffer checksums {[g.tolist() for g in gathered]}")
