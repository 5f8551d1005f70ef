"""Results tables, plots and reports."""

from .plots import plot_adversarial_grid, plot_convergence, plot_metrics_vs_eps
from .table import metrics_table

__all__ = ["metrics_table", "plot_metrics_vs_eps", "plot_adversarial_grid", "plot_convergence"]
