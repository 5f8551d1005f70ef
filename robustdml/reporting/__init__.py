"""Results tables, plots and reports."""

from .table import metrics_table

__all__ = ["metrics_table"]
