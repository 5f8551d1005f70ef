"""Mean ± std over seeds of clean and worst-case metrics, from robust-evaluation results."""

from __future__ import annotations

import statistics

from ..evaluation.metrics import metric_names


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: dict[str, list[dict]], eps_key: str, metrics: tuple[str, ...] | None = None) -> dict[str, dict]:
    """``results``: label -> robust-evaluation results (one per seed). Returns label -> column ->
    (mean, std, n) for ``clean <metric>`` and ``adv <metric>`` (the worst case at ``eps_key``), for
    the metrics shown in summaries (default)."""
    metrics = metrics or metric_names("summary")
    table = {}
    for label, runs in results.items():
        row = {}
        for m in metrics:
            row[f"clean {m}"] = (*mean_std([r["clean"][m] for r in runs]), len(runs))
        for m in metrics:
            row[f"adv {m}"] = (*mean_std([r["worst"][eps_key][m] for r in runs]), len(runs))
        table[label] = row
    return table
