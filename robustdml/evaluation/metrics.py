"""Clustering and retrieval metrics as plain functions.

Clustering: k-means (faiss) with k = number of classes, then NMI (arithmetic normalisation), ARI
(scikit-learn) and pairwise F1 (Manning, Raghavan & Schütze, *Introduction to Information
Retrieval*, §16.3: pairs of samples put in one cluster vs. pairs of one class).
Retrieval: Recall@K and MAP@R (Musgrave et al., "A Metric Learning Reality Check", arXiv 2003.08505),
computed with faiss exact search in chunks of queries, so no N x N similarity matrix is ever built.

Every metric is an entry of ``METRICS``: its name, how it is computed (from one clustering, or from
the one shared kNN search), which way is better and where it is shown (summary tables, plots, honest-evaluation checks, report curves). Config
validation, the robust evaluation's worst case, the checks, tables and plots all read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Callable

import faiss
import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from ..registry import Registry

# Similarity rows per chunk are sized so one chunk of float32 similarities is at most this big.
CHUNK_BYTES = 256 * 2**20


def kmeans(embeddings: np.ndarray, k: int, seed: int = 0, restarts: int = 5, iterations: int = 100,
           max_points_per_centroid: int | None = None):
    """faiss k-means keeping the best of ``restarts`` runs. Returns (assignments (N,), centroids (k, D)).

    Trained on every point unless ``max_points_per_centroid`` is given: then, as faiss does by
    default, on a random sample of ``k * max_points_per_centroid`` points when there are more.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    cap = max(256, len(x)) if max_points_per_centroid is None else max_points_per_centroid
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, nredo=restarts, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=cap)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign.ravel().astype(np.int64), km.centroids.copy()


def nmi(labels, clusters) -> float:
    return float(normalized_mutual_info_score(labels, clusters, average_method="arithmetic"))


def ari(labels, clusters) -> float:
    return float(adjusted_rand_score(labels, clusters))


def pairwise_f1(labels, clusters) -> float:
    """F1 over sample pairs: a pair is predicted positive when both samples share a cluster and is
    truly positive when they share a class. Counted from the contingency table in O(N)."""
    table = contingency_matrix(labels, clusters, sparse=True)

    def pairs(counts) -> int:
        counts = np.asarray(counts, dtype=np.int64).ravel()
        return int((counts * (counts - 1) // 2).sum())

    true_pos = pairs(table.data)
    predicted = pairs(table.sum(axis=0))
    actual = pairs(table.sum(axis=1))
    if true_pos == 0:
        return 0.0
    precision, recall = true_pos / predicted, true_pos / actual
    return float(2 * precision * recall / (precision + recall))


class MetricKind(str, Enum):
    CLUSTERING = "clustering"  # compute(labels, clusters) -> float, on the k-means assignments
    RETRIEVAL = "retrieval"    # compute(match, relevant) -> per-query values, on the shared kNN search


#: Where a metric appears: summary tables (benchmark, README), metric-vs-eps plots of `attack`,
#: the honest-evaluation checks, and the report's worst-case curves.
SHOWN_IN = frozenset({"summary", "plot", "check", "curve"})


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    ``compute``: for a clustering metric ``(labels, clusters) -> float``; for a retrieval metric
    ``(match, relevant) -> (Q,) per-query values``, where ``match`` (Q, depth) says whether each of
    a query's nearest gallery items (best first) shares its class and ``relevant`` (Q,) how many
    gallery items do; the metric is the mean over the queries that have one. ``recall@1`` stands
    for the Recall@K family: every K of the dataset is computed.
    """

    name: str
    kind: MetricKind
    compute: Callable | None = None
    higher_is_better: bool = True
    shown_in: frozenset = frozenset()

    def __post_init__(self):
        if not set(self.shown_in) <= SHOWN_IN:
            raise ValueError(f"metric {self.name}: shown_in must be a subset of {sorted(SHOWN_IN)}")
        if self.compute is None:
            raise ValueError(f"metric {self.name} needs compute: (labels, clusters) for clustering, "
                             "(match, relevant) for retrieval")


def recall_at(k: int) -> Callable:
    """Recall@K per query: whether one of its K nearest items shares its class."""
    def recall(match: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
        return match[:, :k].any(1)
    return recall


def map_at_r(match: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """MAP@R per query: the mean over its first R ranks of precision@i at each relevant rank i."""
    depth = match.shape[1]
    rel = match & (torch.arange(depth)[None, :] < relevant[:, None])
    precision = rel.cumsum(1) / torch.arange(1, depth + 1)[None, :]
    return (precision * rel).sum(1) / relevant.clamp(min=1)


METRICS: Registry = Registry("metric")
register_metric = METRICS.register
_RECALL = re.compile(r"recall@[1-9][0-9]*")

register_metric(Metric("nmi", MetricKind.CLUSTERING, nmi, shown_in=frozenset(SHOWN_IN)))
register_metric(Metric("f1", MetricKind.CLUSTERING, pairwise_f1, shown_in=frozenset({"summary", "plot"})))
register_metric(Metric("ari", MetricKind.CLUSTERING, ari, shown_in=frozenset({"summary", "plot"})))
# Recall@K for every K of the dataset; the entry stands for the family, recall@1 is the one shown.
register_metric(Metric("recall@1", MetricKind.RETRIEVAL, recall_at(1), shown_in=frozenset(SHOWN_IN)))
register_metric(Metric("map@r", MetricKind.RETRIEVAL, map_at_r))


def metric_info(name: str) -> Metric:
    """The registry entry of ``name`` (any ``recall@K`` resolves to the Recall@K family)."""
    if name in METRICS:
        return METRICS[name]
    if _RECALL.fullmatch(name):
        return METRICS["recall@1"]
    return METRICS.lookup(name)


def is_metric(name: str) -> bool:
    return name in METRICS or bool(_RECALL.fullmatch(name))


def metric_names(shown_in: str) -> tuple[str, ...]:
    """Names of the metrics shown in ``shown_in`` (one of ``SHOWN_IN``), in registration order."""
    return tuple(name for name, m in METRICS.items() if shown_in in m.shown_in)


def worse(name: str, a: float, b: float) -> bool:
    """Whether ``a`` is worse for the defender than ``b`` on metric ``name``."""
    return a < b if metric_info(name).higher_is_better else a > b


def cluster_scores(labels, clusters) -> dict[str, float]:
    """Every registered clustering metric of one clustering."""
    return {name: float(m.compute(labels, clusters)) for name, m in METRICS.items() if m.kind is MetricKind.CLUSTERING}


def clustering_metrics(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0, restarts: int = 5) -> dict:
    """k-means with k = number of classes, then every registered clustering metric (NMI, pairwise F1, ARI, ...)."""
    clusters, _ = kmeans(embeddings, int(len(np.unique(labels))), seed=seed, restarts=restarts)
    return cluster_scores(labels, clusters)


def _retrieval_scores(ks) -> dict[str, Callable]:
    """name -> per-query function of every retrieval metric: Recall@K for each K, then the others."""
    scores = {f"recall@{k}": recall_at(k) for k in ks}
    scores.update({name: m.compute for name, m in METRICS.items()
                   if m.kind is MetricKind.RETRIEVAL and not _RECALL.fullmatch(name)})
    return scores


def retrieval_metrics(query: torch.Tensor, query_labels, gallery: torch.Tensor | None = None,
                      gallery_labels=None, ks=(1, 2, 4, 8), chunk_bytes: int = CHUNK_BYTES,
                      leave_one_out: bool | None = None) -> dict:
    """Every registered retrieval metric (Recall@K for each K, MAP@R, ...) by cosine similarity
    (embeddings are unit vectors), from one kNN search.

    With ``gallery=None`` the query set is its own gallery and each query leaves itself out.
    ``leave_one_out=True`` with a gallery means query i and gallery item i are the same image (e.g.
    adversarial queries against their clean selves), so item i is left out for query i.
    Queries with no other sample of their class in the gallery are skipped, as in
    pytorch-metric-learning. Memory is bounded by ``chunk_bytes`` of similarities at a time.
    """
    if leave_one_out is None:
        leave_one_out = gallery is None
    query = torch.as_tensor(query, dtype=torch.float32)
    gallery = query if gallery is None else torch.as_tensor(gallery, dtype=torch.float32)
    ql = torch.as_tensor(np.asarray(query_labels), dtype=torch.int64)
    gl = ql if gallery_labels is None else torch.as_tensor(np.asarray(gallery_labels), dtype=torch.int64)

    classes, counts = torch.unique(gl, return_counts=True)
    pos = torch.searchsorted(classes, ql).clamp(max=len(classes) - 1)
    relevant = torch.where(classes[pos] == ql, counts[pos], torch.zeros_like(ql)) - int(leave_one_out)
    valid = relevant > 0
    n_gallery = len(gallery) - int(leave_one_out)
    depth = min(n_gallery, max(max(ks), int(relevant.max()) if valid.any() else 1))

    scores = _retrieval_scores(ks)
    sums = dict.fromkeys(scores, 0.0)
    for start, match in _neighbour_matches(query, ql, gallery, gl, depth, leave_one_out, chunk_bytes):
        keep = valid[start:start + len(match)]
        r = relevant[start:start + len(match)]
        for name, score in scores.items():
            sums[name] += float(score(match, r)[keep].sum())
    n_valid = max(int(valid.sum()), 1)
    return {name: total / n_valid for name, total in sums.items()}


def _neighbour_matches(query, ql, gallery, gl, depth: int, leave_one_out: bool, chunk_bytes: int):
    """(first query of the chunk, (chunk, depth) same-class flags of its nearest gallery items), a chunk at a time."""
    # Exact inner-product search with faiss, a chunk of queries at a time: measured faster than a
    # chunked torch matmul + top-k on CPU (bench/eval_speed.py), and memory stays bounded by the chunk.
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery.numpy(), dtype=np.float32))
    rows = max(1, chunk_bytes // (4 * len(gallery)))
    for start in range(0, len(query), rows):
        end = min(start + rows, len(query))
        _, found = index.search(np.ascontiguousarray(query[start:end].numpy()), depth + int(leave_one_out))
        top = torch.from_numpy(found)
        if leave_one_out:
            # drop each query's own item; where it is not among the results, drop the last one
            own = top == torch.arange(start, end)[:, None]
            own[~own.any(1), -1] = True
            top = top[~own].view(end - start, depth)
        yield start, gl[top] == ql[start:end, None]
