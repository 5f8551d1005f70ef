"""An evaluation shared by the processes of a ``torchrun`` launch (gloo on CPUs, NCCL on GPUs).

The unit of work is a batch of the test pool: batch ``b`` (the pool's positions ``b·B … b·B+B-1``
for the batch size ``B``) is embedded, and perturbed, by process ``b mod K`` of ``K``. An attack's
random start and random search are seeded per batch, so a sample's perturbation depends on the
batch size, never on the number of processes: ``K`` processes give the figures of one. The clean
and the perturbed batches' embeddings are gathered to every process; what else every process needs
whole — the clean clustering, the attacks' planned targets, the metrics of each attack — is
computed once, by the first process, and sent to the others.

Sharing is asked for (``EvalSettings(distributed=True)``, which the ``attack`` command sets under
torchrun), never inferred from an open process group: training's robust validation runs in its
first process alone while the group is open. ``Shards()`` is one process: every method the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Shards:
    """This process's ``rank`` among the ``world`` processes that share an evaluation."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of_launch(cls) -> "Shards":
        """The processes of the open process group (one process without a group)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def first(self) -> bool:
        return self.rank == 0

    def batches(self, n: int, size: int) -> list[int]:
        """The numbers of this process's batches of ``n`` items in batches of ``size``: ``b mod K == rank``."""
        return list(range(self.rank, -(-n // size), self.world))

    def first_computes(self, compute: Callable[[], T]) -> T:
        """``compute()`` run on rank 0 only, its (picklable) result given to every rank. Every rank
        must call it at the same point, and ``compute`` must not call it again."""
        if self.world == 1:
            return compute()
        box = [compute() if self.first else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_parts(self, parts: dict[int, T]) -> dict[int, T]:
        """Every rank's ``{batch number: part}`` merged, on every rank."""
        if self.world == 1:
            return parts
        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, parts)
        return {number: part for ranks_parts in everyone for number, part in ranks_parts.items()}

    def gather_counts(self, count: int) -> list[int]:
        """Every rank's ``count``, in rank order."""
        if self.world == 1:
            return [count]
        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, count)
        return everyone

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
