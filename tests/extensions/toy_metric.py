"""A toy clustering metric: purity (the share of samples in their cluster's majority class)."""

import numpy as np
from sklearn.metrics.cluster import contingency_matrix

from robustdml.evaluation import Metric, MetricKind, register_metric


def purity(labels, clusters) -> float:
    table = contingency_matrix(labels, clusters)
    return float(np.amax(table, axis=0).sum() / table.sum())


register_metric(Metric("purity", MetricKind.CLUSTERING, purity, shown_in=frozenset({"summary", "plot"})))
