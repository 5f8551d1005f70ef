"""Embedding a dataset with a model, batched, under no_grad, leaving the model's mode as it was."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..models.modes import eval_mode


@torch.no_grad()
def embed(model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "cpu",
          workers: int = 0, progress: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Returns (embeddings (N, D) float32 on CPU, labels (N,))."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=torch.device(device).type == "cuda")
    out, labels = [], []
    with eval_mode(model):
        for images, y in tqdm(loader, desc="embed", leave=False, disable=None if progress else True):
            out.append(model(images.to(device, non_blocking=True)).float().cpu())
            labels.append(y)
    return torch.cat(out), torch.cat(labels).numpy()
