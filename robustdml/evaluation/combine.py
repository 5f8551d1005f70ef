"""Clustering-level combination of candidate perturbations.

Every attack run at one eps gives each test image a candidate adversarial embedding, each the
embedding of a real image within the budget. Because the attacker perturbs every image, it may
choose per image which candidate to use; a per-attack worst case misses what such a choice does to
the clustering as a whole. Each combination below picks one candidate per image, and the chosen
embeddings are clustered again and scored like any attack's:

- ``combo-margin``: per image, the candidate farthest across the boundary of its clean cluster
  (the centroid margin ``max_{j != a} cos(e, c_j) - cos(e, c_a)`` on the clean centroids);
- ``combo-spread`` (label-aware): images in turn, each class's images spread greedily over the
  clusters: each takes the candidate whose nearest clean centroid holds the fewest images of its
  class so far (the larger margin on ties), so every cluster ends up a mix of classes;
- ``combo-retrieval``: per query, the candidate with the largest retrieval margin (nearest
  other-class gallery item minus nearest same-class one); gallery images as in ``combo-margin``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 2048  # images per block, so no (candidates x images x clusters) array is built whole
SIMILARITIES = 1 << 24  # query-gallery similarities held at once (64 MB of float32), whatever the gallery's size


def _margins(candidates: torch.Tensor, centroids: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """(A, N) centroid margins of A candidate embeddings per image, and (A, N) the nearest centroid."""
    centroids = F.normalize(centroids, dim=1)
    margins, nearest = [], []
    for lo in range(0, candidates.shape[1], CHUNK):
        cos = candidates[:, lo:lo + CHUNK] @ centroids.T  # (A, n, k)
        own_cluster = clusters[lo:lo + CHUNK].expand(len(candidates), -1)[..., None]
        own = cos.gather(2, own_cluster).squeeze(2)
        margins.append(cos.scatter(2, own_cluster, -torch.inf).amax(2) - own)
        nearest.append(cos.argmax(2))
    return torch.cat(margins, 1), torch.cat(nearest, 1)


def margin_choice(candidates: torch.Tensor, centroids: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """(N,) index of the candidate with the largest centroid margin per image."""
    return _margins(candidates, centroids, clusters)[0].argmax(0)


def spread_choice(candidates: torch.Tensor, centroids: torch.Tensor, clusters: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
    """(N,) the label-aware greedy spread described in the module docstring."""
    margins, landing = _margins(candidates, centroids, clusters)  # landing: (A, N) nearest clean centroid
    classes, label_index = torch.unique(labels, return_inverse=True)
    counts = torch.zeros(len(classes), len(centroids), dtype=torch.long)
    chosen = torch.empty(len(labels), dtype=torch.long)
    # tie-break by margin: order the candidates of each image by margin, best first
    order = margins.argsort(0, descending=True)
    landing_sorted = landing.gather(0, order)
    for i in range(len(labels)):
        row = counts[int(label_index[i])]  # a view: the loads of this class
        loads = row[landing_sorted[:, i]]
        best = int(torch.argmin(loads))  # argmin returns the first minimum: the largest margin among ties
        chosen[i] = order[best, i]
        row[landing_sorted[best, i]] += 1
    return chosen


def retrieval_choice(candidates: torch.Tensor, queries: int, reference: torch.Tensor, reference_labels: torch.Tensor,
                     labels: torch.Tensor, self_index: torch.Tensor, centroids: torch.Tensor,
                     clusters: torch.Tensor) -> torch.Tensor:
    """(N,) per query (the first ``queries`` images) the candidate with the largest retrieval margin;
    the other images (a gallery) by centroid margin. One candidate and a block of queries at a
    time, so memory stays at ``SIMILARITIES`` similarities for any test set."""
    chosen = margin_choice(candidates, centroids, clusters)
    rows = max(1, SIMILARITIES // max(1, len(reference)))
    for lo in range(0, queries, rows):
        hi = min(lo + rows, queries)
        same = labels[lo:hi, None] == reference_labels[None, :]
        own = torch.zeros_like(same)
        has_own = torch.nonzero(self_index[lo:hi] >= 0).squeeze(1)
        own[has_own, self_index[lo:hi][has_own]] = True
        not_positive = ~same | own  # built once per block, shared by the candidates
        margins = torch.stack([_retrieval_margin(c[lo:hi] @ reference.T, same, not_positive) for c in candidates])
        chosen[lo:hi] = margins.argmax(0)
    return chosen


def _retrieval_margin(sims: torch.Tensor, same: torch.Tensor, not_positive: torch.Tensor) -> torch.Tensor:
    """(n,) nearest other-class similarity minus nearest same-class one (``not_positive``: other
    classes and the query itself)."""
    negative = sims.masked_fill(same, -torch.inf).amax(1)
    positive = sims.masked_fill_(not_positive, -torch.inf).amax(1)
    return torch.nan_to_num(negative - positive, nan=-torch.inf)


def pick(candidates: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """(N, D) the chosen candidate embedding of every image."""
    return candidates[choice, torch.arange(candidates.shape[1])]
