"""Plain-text and Markdown tables of metrics."""

from __future__ import annotations


def metrics_table(rows: dict[str, dict[str, float]], columns: list[str] | None = None, markdown: bool = False) -> str:
    """One row per entry of ``rows`` (e.g. "clean", "worst"), one column per metric."""
    columns = columns or list(dict.fromkeys(k for r in rows.values() for k in r))
    header = [""] + columns
    body = [[name] + [_fmt(r.get(c)) for c in columns] for name, r in rows.items()]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = lambda row: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(header)] + [fmt(r) for r in body])


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
