"""A toy retrieval metric: R-precision (the share of a query's R nearest items of its own class, R
the number of them in the gallery), computed from the shared kNN result."""

import torch

from robustdml.evaluation import Metric, MetricKind, register_metric


def r_precision(match: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    within_r = torch.arange(match.shape[1])[None, :] < relevant[:, None]
    return (match & within_r).sum(1) / relevant.clamp(min=1)


register_metric(Metric("r-precision", MetricKind.RETRIEVAL, r_precision, shown_in=frozenset({"summary", "plot"})))
