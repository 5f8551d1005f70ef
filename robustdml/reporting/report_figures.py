"""The figures of the benchmark report: worst case against eps, convergence, t-SNE, certificates."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..attacks import Norm  # noqa: E402
from ..evaluation.metrics import metric_names  # noqa: E402
from .plots import _save, plot_convergence  # noqa: E402


def _curves(group: dict, path: Path) -> Path:
    metrics = metric_names("curve")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    axes = axes[0]
    for ax, metric in zip(axes, metrics):
        for method, runs in group["runs"].items():
            keys = list(runs[0]["worst"])
            eps = [0.0] + [float(k) for k in keys]
            values = [[r["clean"][metric]] + [r["worst"][k][metric] for k in keys] for r in runs]
            mean = [sum(v[i] for v in values) / len(values) for i in range(len(eps))]
            ax.plot(eps, mean, marker="o", ms=3, label=method)
        ax.set_title(f"worst-case {metric} (mean over seeds)")
        ax.set_xlabel(f"eps ({Norm(next(iter(group['runs'].values()))[0].get('settings', {}).get('norm', 'linf')).symbol})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _convergence(group: dict, path: Path) -> Path | None:
    """The checks' rerun with doubled iterations, traced (first seed of each method)."""
    curves = {f"{method}: {attack}": curve for method, runs in group["runs"].items()
              for attack, curve in runs[0].get("convergence", {}).items()}
    return plot_convergence(curves, path) if curves else None


def tsne_panels(group: dict) -> list[tuple[str, dict]]:
    """(title, t-SNE) per method: its lowest seed that has one (a grid run a seed at a time with
    ``--only`` leaves one in every seed's cell)."""
    panels = []
    for method, runs in group["runs"].items():
        first = min((r for r in runs if r.get("tsne")), key=lambda r: r["cell"]["seed"], default=None)
        if first:
            panels.append((f"{method} (seed {first['cell']['seed']})", first["tsne"]))
    return panels


def _tsne(group: dict, path: Path) -> Path | None:
    panels = tsne_panels(group)
    if not panels:
        return None
    fig, axes = plt.subplots(1, 2 * len(panels), figsize=(4 * 2 * len(panels), 3.8), squeeze=False)
    for j, (method, t) in enumerate(panels):
        for k, part in enumerate(("clean", "adversarial")):
            ax = axes[0][2 * j + k]
            xy = list(zip(*t[part]))
            ax.scatter(xy[0], xy[1], c=t["labels"], cmap="tab10", s=6)
            ax.set_title(f"{method}: {part}" + (f" ({t['attack']}, eps={t['eps']:.3g})" if k else ""), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def _certify_plot(rows: dict[str, list[dict]], path: Path) -> Path:
    from .plots import plot_certified
    means = {m: {"radii": found[0]["radii"],
                 "certified_assignment": list(np.mean([f["certified_assignment"] for f in found], axis=0)),
                 "certified_recall_at_1": list(np.mean([f["certified_recall_at_1"] for f in found], axis=0))}
             for m, found in rows.items()}
    return plot_certified(means, path)
