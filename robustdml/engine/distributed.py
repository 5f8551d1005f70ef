"""Multi-process training with torch.distributed: one process per GPU under ``torchrun`` (NCCL), or
several CPU processes (gloo). The same code runs single-process when no launcher set WORLD_SIZE.

Each rank takes its slice of every global batch; the loss is computed on the *global* batch (the
embeddings are gathered with gradient), so Proxy Anchor sees the same batch as in one process; the
gradients are averaged across ranks after backward, so weights and proxies stay identical.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from ..errors import ConfigError


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), local


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


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


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0 (sizes may differ), keeping the gradient path to
    each rank's own part."""
    from torch.distributed.nn.functional import all_gather

    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    sizes = [int(s) for s in sizes]
    padded = torch.cat([x, x.new_zeros((max(sizes) - len(x),) + x.shape[1:])]) if len(x) < max(sizes) else x
    parts = all_gather(padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


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
    world = dist.get_world_size()
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def assert_in_sync(modules) -> None:
    """Raise if any rank's parameters differ from rank 0's (checked after every step when
    ``check_sync`` is on)."""
    flat = torch.cat([p.detach().reshape(-1).double() for m in modules for p in m.parameters()])
    stats = torch.stack([flat.sum(), (flat * flat).sum(), (flat * torch.arange(len(flat), dtype=flat.dtype,
                                                                                device=flat.device) % 7).sum()])
    gathered = [torch.zeros_like(stats) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, stats)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"ranks out of sync: parameter checksums {[g.tolist() for g in gathered]}")
