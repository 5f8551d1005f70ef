"""When a training run stopped improving: the epoch count a grid trains for, read off one long run.

The rule (ours): each validation metric is smoothed by a trailing mean over ``window`` evaluations
(robust validation on a few hundred images moves by a few hundredths from one epoch to the next);
the run has converged at the first evaluated epoch after which no later smoothed value of *any* of
the metrics exceeds the best smoothed value so far by more than ``tol``.

>>> plateau_epoch("runs/zs-epochs/pgd-at")   # its log.csv; clean and robust validation NMI by default

``robustdml converged RUN...`` prints it for each run, the epoch count the runs agree on, and plots
the curves with each plateau marked.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import ConfigError


def validation_rows(run: str | Path) -> list[dict[str, float]]:
    """The evaluated epochs of a run's ``log.csv`` (``run``: the run folder or the file), as numbers."""
    path = Path(run)
    path = path / "log.csv" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"{path} not found: give a training run's folder or its log.csv")
    with path.open(newline="") as f:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    return [r for r in rows if "epoch" in r]


def plateau_epoch(run, metrics: tuple[str, ...] = ("nmi", "robust_nmi"), tol: float = 0.01,
                  window: int = 3) -> int | None:
    """The first epoch after which none of ``metrics`` (smoothed over ``window`` evaluations) rises
    by more than ``tol`` above its best so far; None where the last evaluation still does (the run
    was too short to tell). ``run``: a run folder, its ``log.csv``, or rows as :func:`validation_rows`
    gives them."""
    rows, smoothed = smoothed_curves(run, metrics, window)
    i = plateau_index(smoothed, tol)
    return None if i is None else int(rows[i]["epoch"])


def plateau_index(smoothed: dict[str, list[float]], tol: float = 0.01) -> int | None:
    """:func:`plateau_epoch` on curves :func:`smoothed_curves` gives: the index of the row, or None."""
    if tol < 0:
        raise ConfigError(f"tol must be at least 0, got {tol}")
    n = len(next(iter(smoothed.values())))
    for i in range(n - 1):
        if all(max(c[i + 1:]) <= max(c[:i + 1]) + tol for c in smoothed.values()):
            return i
    return None


def smoothed_curves(run, metrics: tuple[str, ...] = ("nmi", "robust_nmi"),
                    window: int = 3) -> tuple[list[dict[str, float]], dict[str, list[float]]]:
    """The evaluated rows that have every metric, and each metric's trailing mean over ``window``
    evaluations, row by row (``run`` as for :func:`plateau_epoch`)."""
    rows = validation_rows(run) if isinstance(run, (str, Path)) else list(run)
    if window < 1:
        raise ConfigError(f"window must be at least 1, got {window}")
    rows = [r for r in rows if all(m in r for m in metrics)]
    if not rows:
        raise ConfigError(f"no evaluated epoch has all of {', '.join(metrics)}")
    smoothed = {m: [sum(r[m] for r in rows[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))
                    for i in range(len(rows))] for m in metrics}
    return rows, smoothed

