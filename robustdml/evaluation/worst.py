"""The worst case over attacks: per metric, the value worst for the defender and which attack gave it.

``results`` is attack label -> eps key -> metric -> value, as in
:class:`~robustdml.evaluation.results.RobustResult`.
"""

from __future__ import annotations

from .metrics import worse


def eps_key(eps: float) -> str:
    """JSON key of an eps value: a short, exact-enough decimal ("0.1", "0.0313725")."""
    return f"{eps:.6g}"


def worst_of(metrics_of: dict[str, dict[str, float]]) -> tuple[dict[str, float], dict[str, str]]:
    """Over ``label -> metric -> value``: per metric the value worst for the defender, and its label."""
    worst, which = {}, {}
    for name, metrics in metrics_of.items():
        for metric, value in metrics.items():
            if metric not in worst or worse(metric, value, worst[metric]):
                worst[metric], which[metric] = value, name
    return worst, which


def worst_case(results: dict[str, dict[str, dict]], keys: list[str]) -> tuple[dict, dict]:
    """Per eps key and metric: the value worst for the defender over the attacks run at that eps,
    and which attack gave it."""
    worst, which = {}, {}
    for k in keys:
        worst[k], which[k] = worst_of({name: per_eps[k] for name, per_eps in results.items() if k in per_eps})
    return worst, which


def strongest(labels: list[str], metrics_of: dict[str, dict], metric: str) -> str:
    """The label whose result is worst for the defender on ``metric``."""
    best = labels[0]
    for label in labels[1:]:
        if worse(metric, metrics_of[label][metric], metrics_of[best][metric]):
            best = label
    return best
