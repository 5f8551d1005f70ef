"""One robust evaluation as a person reads it: the metrics table under its suite and budget, with the
upper bounds marked and the checks' states, and its plots."""

from __future__ import annotations

from pathlib import Path

from ..attacks import format_budget
from ..evaluation.checks import UPPER_BOUND, failure_note, upper_bounds
from .plots import plot_adversarial_grid, plot_convergence, plot_metrics_vs_eps
from .settings import describe_suite
from .table import metrics_table


def robust_summary(found) -> str:
    """The metrics table (clean, every attack at every eps, the worst case with the attack that gave
    it) under the budget's norm; an upper-bound mark on every worst figure a failed check touches;
    the checks' states, with the amount and the remedy of each failure."""
    from ..evaluation.robust import eps_key

    norm = found.settings.get("norm", "linf")
    bounds = upper_bounds(found.checks)
    rows = {"clean": found.clean}
    for k in found.worst:
        budget = format_budget(float(k), norm)
        for name, per_eps in found.attacks.items():
            if k in per_eps:
                rows[f"{name} @ {budget}"] = per_eps[k]
        marked = k == eps_key(found.main_eps)  # the checks rerun the attacks at the main eps
        rows[f"WORST @ {budget}"] = {m: f"{v:.4f}{UPPER_BOUND if marked and m in bounds else ''}"
                                     for m, v in found.worst[k].items()}
        rows[f"  worst by @ {budget}"] = found.worst_attack[k]
    lines = [f"Robust figures over {describe_suite(found.settings, found.test_images)}", metrics_table(rows), ""]
    for name, check in found.checks.items():
        state = {True: "passed", False: "FAILED", None: "skipped"}[check["passed"]]
        detail = failure_note(name, check) if check["passed"] is False else check.get("note", "")
        lines.append(f"check {name:28s} {state}" + (f"  ({detail})" if detail else ""))
    if bounds:
        lines.append(f"{UPPER_BOUND} upper bound: a check failed on this figure ("
                     + "; ".join(f"{m}: {', '.join(c)}" for m, c in bounds.items() if m in found.worst[eps_key(found.main_eps)])
                     + ")")
    return "\n".join(lines)


def robust_plots(found, out_dir: str | Path) -> list[Path]:
    """Metrics against eps, the adversarial examples of the attack with the worst NMI, and the
    checks' convergence curves (when they ran), as PNG files in ``out_dir``."""
    from ..evaluation.robust import eps_key

    out_dir, sample = Path(out_dir), found.sample
    plots = [plot_metrics_vs_eps(found.to_dict(), out_dir / "metrics_vs_eps.png")]
    if sample.clean is not None:
        plots.append(plot_adversarial_grid(sample.clean, sample.adversarial, sample.eps,
                                           out_dir / "adversarial_examples.png",
                                           title=f"{sample.attack} attack, eps={eps_key(sample.eps)}"))
    if found.convergence:
        plots.append(plot_convergence(found.convergence, out_dir / "convergence.png"))
    return plots
