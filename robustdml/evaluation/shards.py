"""An evaluation shared by the processes of a ``torchrun`` launch (gloo on CPUs, NCCL on GPUs).

The unit of work is a batch of the test pool: batch ``b`` (the pool's positions ``b·B … b·B+B-1``
for the batch size ``B``) is perturbed by process ``b mod K`` of ``K``. An attack's random start and
random search are seeded per batch, so a sample's perturbation depends on the batch size, never on
the number of processes: ``K`` processes give the figures of one. What every process needs whole —
the clean embeddings, the clean clustering, the attacks' planned targets, the metrics of each
attack — is computed once, by the first process, and sent to the others; the perturbed batches'
embeddings are gathered to every process.

In a single process every function here is the identity (no process group is needed).
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def shard() -> tuple[int, int]:
    """(this process's rank, the number of processes) of the evaluation: (0, 1) without a group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def first_computes(compute: Callable[[], T]) -> T:
    """``compute()`` run on rank 0 only, its (picklable) result given to every rank."""
    rank, world = shard()
    if world == 1:
        return compute()
    box = [compute() if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_parts(parts: dict[int, T]) -> dict[int, T]:
    """Every rank's ``{batch number: part}`` merged, on every rank."""
    rank, world = shard()
    if world == 1:
        return parts
    everyone: list = [None] * world
    dist.all_gather_object(everyone, parts)
    return {number: part for ranks_parts in everyone for number, part in ranks_parts.items()}


def gather_counts(count: int) -> list[int]:
    """Every rank's ``count``, in rank order."""
    rank, world = shard()
    if world == 1:
        return [count]
    everyone: list = [None] * world
    dist.all_gather_object(everyone, count)
    return everyone


def barrier() -> None:
    if shard()[1] > 1:
        dist.barrier()
