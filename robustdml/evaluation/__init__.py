"""Evaluation: metrics as plain functions, embedding, clean evaluation of a model on a dataset.

>>> from robustdml.evaluation import evaluate_model
>>> evaluate_model(model, "digits")["nmi"]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import dataset_spec, evaluation_sets
from .embed import embed
from .metrics import (METRICS, Metric, MetricKind, ari, clustering_metrics, kmeans, metric_names, nmi, pairwise_f1,
                      register_metric, retrieval_metrics)
from .shards import Shards


def evaluate_embeddings(query: torch.Tensor, query_labels: np.ndarray, gallery: torch.Tensor | None = None,
                        gallery_labels: np.ndarray | None = None, ks=(1, 2, 4, 8), seed: int = 0,
                        restarts: int = 5) -> dict[str, float]:
    """Every metric for one set of embeddings. Clustering runs on all test embeddings (query and
    gallery together when there is a gallery), with k = number of classes among them."""
    if gallery is None:
        all_emb, all_labels = query, query_labels
    else:
        all_emb, all_labels = torch.cat([query, gallery]), np.concatenate([query_labels, gallery_labels])
    result = clustering_metrics(all_emb.numpy(), all_labels, seed=seed, restarts=restarts)
    result.update(retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=ks))
    return result


def evaluate_model(model: nn.Module, dataset: str, root=None, device: str | torch.device = "cpu",
                   batch_size: int = 256, image_size: int = 224, seed: int = 0, workers: int = 0,
                   progress: bool = False, restarts: int = 5) -> dict[str, float]:
    """Clean metrics of ``model`` on the test classes of ``dataset``."""
    query_set, gallery_set = evaluation_sets(dataset, root, image_size=image_size)
    return clean_metrics(model, query_set, gallery_set, ks=dataset_spec(dataset).recall_ks, device=device,
                         batch_size=batch_size, seed=seed, workers=workers, progress=progress, restarts=restarts)


def clean_metrics(model: nn.Module, query_set, gallery_set=None, *, ks=(1, 2, 4, 8), device="cpu",
                  batch_size: int = 256, seed: int = 0, workers: int = 0, progress: bool = False,
                  restarts: int = 5, shards: Shards | None = None) -> dict[str, float]:
    """Clean metrics of ``model`` on a query set and its gallery (None: leave-one-out in the queries).
    ``shards``: the processes of a ``torchrun`` launch share the embedding (:func:`embed`); the
    first computes the metrics, and every process gets them."""
    shards = shards or Shards()
    q, ql = embed(model, query_set, batch_size, device, workers, progress, shards)
    g, gl = (embed(model, gallery_set, batch_size, device, workers, progress, shards) if gallery_set is not None
             else (None, None))
    return shards.first_computes(lambda: evaluate_embeddings(q, ql, g, gl, ks=ks, seed=seed, restarts=restarts))


__all__ = ["embed", "evaluate_embeddings", "evaluate_model", "clean_metrics", "clustering_metrics", "retrieval_metrics",
           "kmeans", "nmi", "ari", "pairwise_f1", "METRICS", "Metric", "MetricKind", "metric_names", "register_metric"]
