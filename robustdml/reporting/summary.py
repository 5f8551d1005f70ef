"""Mean ± std over seeds of clean and worst-case metrics, from robust-evaluation results."""

from __future__ import annotations

import statistics

SUMMARY_METRICS = ("nmi", "f1", "ari", "recall@1")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: dict[str, list[dict]], eps_key: str, metrics=SUMMARY_METRICS) -> dict[str, dict]:
    """``results``: label -> robust-evaluation results (one per seed). Returns label -> column ->
    (mean, std, n) for ``clean <metric>`` and ``adv <metric>`` (the worst case at ``eps_key``)."""
    table = {}
    for label, runs in results.items():
        row = {}
        for m in metrics:
            row[f"clean {m}"] = (*mean_std([r["clean"][m] for r in runs]), len(runs))
        for m in metrics:
            row[f"adv {m}"] = (*mean_std([r["worst"][eps_key][m] for r in runs]), len(runs))
        table[label] = row
    return table


def summary_markdown(table: dict[str, dict], label: str = "method") -> str:
    columns = list(next(iter(table.values())))
    lines = ["| " + " | ".join([label] + columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, row in table.items():
        lines.append("| " + " | ".join([name] + [f"{m:.3f} ± {s:.3f}" for m, s, _ in row.values()]) + " |")
    return "\n".join(lines)
