"""Plots: metrics against eps (a line per attack), and clean / adversarial / perturbation images."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..attacks import Norm  # noqa: E402
from ..evaluation.metrics import metric_names  # noqa: E402
from ..files import atomic_path  # noqa: E402


def _panels(count: int, width: float = 4.5):
    """A figure with one row of ``count`` panels, each ``width`` inches wide; the figure and the row."""
    fig, axes = plt.subplots(1, count, figsize=(width * count, 3.4), squeeze=False)
    return fig, axes[0]


def _finish(fig, axes, path, xlabel: str, legend_size: int = 8) -> Path:
    """Every panel labelled and gridded, the legend on the first, the figure saved to ``path``."""
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=legend_size)
    fig.tight_layout()
    return _save(fig, path)


def plot_metrics_vs_eps(result: dict, path: str | Path, metrics: tuple[str, ...] | None = None) -> Path:
    """One panel per metric (default: those registered for plots); a line per attack (for large
    suites: the attacks that gave the worst case, and noise) and a dashed line for the worst case;
    clean at eps 0."""
    metrics = metrics or metric_names("plot")
    eps_keys = list(result["worst"])
    eps = [float(k) for k in eps_keys]
    fig, axes = _panels(len(metrics), width=4)
    for ax, metric in zip(axes, metrics):
        clean = result["clean"][metric]
        # the attacks that were worst at some eps for this metric, and the noise floor (a suite can hold dozens)
        shown = {a for per_metric in result["worst_attack"].values() for m, a in per_metric.items() if m == metric}
        for name, per_eps in result["attacks"].items():
            if name not in shown and name != "noise" and len(result["attacks"]) > 6:
                continue
            ks = [k for k in eps_keys if k in per_eps]
            ax.plot([0] + [float(k) for k in ks], [clean] + [per_eps[k][metric] for k in ks], marker="o", ms=3,
                    label=name)
        ax.plot([0] + eps, [clean] + [result["worst"][k][metric] for k in eps_keys], "k--", lw=2, label="worst")
        ax.set_title(metric)
        ax.set_ylim(bottom=0)
    return _finish(fig, axes, path, f"eps ({Norm(result.get('settings', {}).get('norm', 'linf')).symbol})")


def plot_convergence(curves: dict[str, dict], path: str | Path) -> Path:
    """Metric against attack iterations (log scale), a line per entry of ``curves`` (label ->
    {"iterations": [...], metric: [...]}); one panel per metric of the checks. A line still falling
    at the right edge means the attack had not converged."""
    metrics = metric_names("check")
    fig, axes = _panels(len(metrics))
    for ax, metric in zip(axes, metrics):
        for label, curve in curves.items():
            ax.plot(curve["iterations"][:len(curve[metric])], curve[metric], marker="o", ms=3, label=label)
        ax.set_xscale("log")
        ticks = sorted({i for curve in curves.values() for i in curve["iterations"]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(f"{metric} vs attack iterations")
    return _finish(fig, axes, path, "iterations", legend_size=7)


def plot_adversarial_grid(clean: torch.Tensor, adversarial: torch.Tensor, eps: float, path: str | Path,
                          title: str = "") -> Path:
    """Rows: clean, adversarial, perturbation amplified to the full range (0.5 + δ / 2eps)."""
    n = len(clean)
    delta = adversarial - clean
    amplified = (0.5 + delta / (2 * max(eps, 1e-12))).clamp(0, 1)
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2), squeeze=False)
    for row, (images, label) in enumerate([(clean, "clean"), (adversarial, "adversarial"), (amplified, "perturbation")]):
        for i in range(n):
            ax = axes[row][i]
            image = images[i].permute(1, 2, 0).numpy()
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")  # no label cut off at an edge
    plt.close(fig)
    return path


def plot_certified(results: dict[str, dict], path: str | Path) -> Path:
    """Certified fraction against the L2 input radius, assignment and Recall@1, one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for name, found in results.items():
        axes[0].plot(found["radii"], found["certified_assignment"], marker="o", label=name)
        axes[1].plot(found["radii"], found["certified_recall_at_1"], marker="o", label=name)
    for ax, title in zip(axes, ("k-means assignment", "Recall@1 answer")):
        ax.set_title(f"certified {title}")
        ax.set_xlabel("L2 radius (pixel units)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of test images")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_plateaus(curves: dict[str, tuple[list[dict], dict[str, list[float]], int | None]], path: str | Path,
                  window: int) -> Path:
    """One panel per metric: each run's validation (dots) and its trailing mean over ``window``
    evaluations (line), its plateau epoch a dashed vertical line. ``curves``: label -> (rows,
    smoothed curves, plateau epoch), as ``robustdml.reporting.convergence`` gives them."""
    metrics = list(next(iter(curves.values()))[1])
    fig, axes = _panels(len(metrics))
    for label, (rows, smoothed, epoch) in curves.items():
        epochs = [r["epoch"] for r in rows]
        for ax, m in zip(axes, metrics):
            (line,) = ax.plot(epochs, smoothed[m], label=f"{label} (plateau: {epoch or 'not yet'})")
            ax.plot(epochs, [r[m] for r in rows], "o", ms=3, alpha=0.4, color=line.get_color())
            if epoch is not None:
                ax.axvline(epoch, ls="--", lw=1, color=line.get_color())
    for ax, m in zip(axes, metrics):
        ax.set_title(f"{m} (trailing mean of {window})")
    return _finish(fig, axes, path, "epoch")
