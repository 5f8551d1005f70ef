"""How a robust figure was obtained, in words: the suite, its attacks and optimisers, iterations,
restarts, budgets and the number of test images. Every table of robust figures the CLI or the report
prints starts with this line, so that a 5-step, 4-attack run never reads like the ``strong`` suite."""

from __future__ import annotations

from ..attacks import format_budget


def describe_suite(settings: dict, test_images: int | None = None, suite: dict | None = None) -> str:
    """One line from a robust result's ``settings`` (and, where the benchmark recorded it, the
    suite's own entries ``suite``, which name each attack's optimiser).

    Example: ``the strong suite: 9 attacks (displacement [apgd], ..., noise), 100 iterations, 1 restart,
    budgets L∞ 0.05, 0.1, 0.15 (figures at 0.1), 1,797 test images``."""
    norm = settings.get("norm", "linf")
    labels = list(settings.get("attacks", []))
    optimizers = dict(settings.get("optimizers", {}))
    for entry in (suite or {}).get("attacks", []) if isinstance((suite or {}).get("attacks"), list) else []:
        if isinstance(entry, dict):
            optimizers.setdefault(entry.get("label", entry.get("attack")), entry.get("optimizer", "pgd"))
    named = [f"{a} [{optimizers[a]}]" if optimizers.get(a) not in (None, "pgd") else a for a in labels]
    restarts = settings.get("restarts", 1)
    eps = settings.get("eps", [])
    main = settings.get("main_eps")
    budgets = ", ".join(format_budget(e, norm) if i == 0 else format_budget(e, norm).split(" ", 1)[1]
                        for i, e in enumerate(eps))
    name = settings.get("suite")
    line = (f"{f'the {name}' if name else 'a custom'} suite: {len(labels)} attack{'s' if len(labels) != 1 else ''} ({', '.join(named)}), "
            f"{settings.get('steps')} iterations, {restarts} restart{'s' if restarts != 1 else ''}, budgets {budgets}")
    if main is not None and len(eps) > 1:
        line += f" (figures at {format_budget(main, norm)})"
    if test_images:
        line += f", {test_images:,} test images"
    return line
