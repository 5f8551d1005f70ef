"""Embedding a dataset with a model, batched, under no_grad, leaving the model's mode as it was."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..models.modes import eval_mode
from .shards import Shards


@torch.no_grad()
def embed(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "cpu",
          workers: int = 0, progress: bool = False, shards: Shards | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Returns (embeddings (N, D) float32 on CPU, labels (N,)).

    ``shards``: the processes of a ``torchrun`` launch share the work: batch ``b`` is embedded by
    process ``b mod K``, and every process gets the whole set. The batches are those of one
    process, so the embeddings are too."""
    shards = shards or Shards()
    n = len(dataset)
    numbers = shards.batches(n, batch_size)
    if shards.world > 1:
        # this process's batches back to back; only the set's last batch is short, and it comes last
        dataset = Subset(dataset, [i for b in numbers for i in range(b * batch_size, min((b + 1) * batch_size, n))])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=torch.device(device).type == "cuda")
    parts = {}
    with eval_mode(model):
        for number, (images, y) in zip(numbers, tqdm(loader, desc="embed", leave=False,
                                                     disable=None if progress else True)):
            parts[number] = (model(images.to(device, non_blocking=True)).float().cpu(), y)
    ordered = [part for _, part in sorted(shards.gather_parts(parts).items())]
    return torch.cat([e for e, _ in ordered]), torch.cat([y for _, y in ordered]).numpy()
