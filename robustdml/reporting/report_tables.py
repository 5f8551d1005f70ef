"""The Markdown sections of the benchmark report: the metrics table with its upper-bound marks and
stale rows, the suite line, the worst attacks, the checks, RobRank's table, the certificates, the
configs."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from ..evaluation.results import SMOOTHED_VS_CERTIFIED
from ..evaluation.checks import CHECK_MEANING, UPPER_BOUND, failed_metrics, failure_note, upper_bounds
from ..evaluation.metrics import metric_names
from .summary import mean_std


def _number(mean: float, std: float, n: int) -> str:
    """``0.512 ± 0.022`` over several seeds; ``0.512`` for one (a spread of one value is no spread)."""
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def _table_md(rows: dict, marks: dict | None = None, labels: dict | None = None) -> str:
    """rows: method -> column -> (mean, std, n); marks: method -> column -> footnote marks to append;
    labels: method -> the row's label (e.g. with a stale mark)."""
    marks, labels = marks or {}, labels or {}
    cols = list(next(iter(rows.values())))
    lines = ["| method | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for method, row in rows.items():
        n = next(iter(row.values()))[2]
        lines.append(f"| {labels.get(method, method)} | {n} | " + " | ".join(
            _number(m, s, k) + marks.get(method, {}).get(col, "") for col, (m, s, k) in row.items()) + " |")
    return "\n".join(lines)


def _suite_md(group: dict) -> str:
    """Which suite and settings produced the group's robust figures (one line per distinct setting)."""
    from .settings import describe_suite
    described: dict[str, list[str]] = {}
    for method, runs in group["runs"].items():
        for r in runs:
            line = describe_suite(r.get("settings", {}), r.get("test_images"),
                                  r.get("parts", {}).get("attack", {}).get("settings", {}).get("suite"))
            described.setdefault(line, []).append(f"{method} seed {r['cell']['seed']}")
    if len(described) == 1:
        return f"Robust figures: the worst case over {next(iter(described))}.\n"
    return "Robust figures: the worst case over the attack suite; the cells differ in its settings:\n\n" + "\n".join(
        f"- {line}: {', '.join(cells)}" for line, cells in described.items()) + "\n"


def _upper_bound_marks(group: dict) -> tuple[dict, list[str]]:
    """† on every adversarial figure to which a cell's failed check applies, and the footnotes
    (check, seed, amount): method -> column -> mark, and the footnote lines."""
    marks: dict = defaultdict(dict)
    notes = []
    for method, runs in group["runs"].items():
        for r in runs:
            bounds = upper_bounds(r.get("checks", {}))
            for metric in bounds:
                marks[method][f"adv {metric}"] = UPPER_BOUND
            for name, check in r.get("checks", {}).items():
                if failed_metrics(name, check) != []:
                    notes.append(f"{UPPER_BOUND} upper bound: {method} seed {r['cell']['seed']}, check `{name}` "
                                 f"failed ({CHECKS_LINK}): {failure_note(name, check)}.")
    return marks, notes


def _stale_labels(group: dict) -> tuple[dict, list[str]]:
    """Rows holding a cell kept with ``--reuse-stale``, marked, and what changed since."""
    labels, notes = {}, []
    for method, runs in group["runs"].items():
        for r in runs:
            for part, changes in r.get("stale", {}).items():
                labels[method] = f"{method} (stale)"
                notes.append(f"stale: {method} seed {r['cell']['seed']}, its {part} results were made with other "
                             f"settings ({'; '.join(changes)}) and kept by --reuse-stale.")
    return labels, notes


def _worst_by_md(group: dict) -> str:
    """Which attack gave each worst-case figure at the main eps (per seed, where seeds differ)."""
    metrics = metric_names("summary")
    eps = group["eps"]
    lines = ["| method | " + " | ".join(f"worst {m} by" for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for method, runs in group["runs"].items():
        cells = []
        for m in metrics:
            found = list(dict.fromkeys(r.get("worst_attack", {}).get(eps, {}).get(m, "-") for r in runs))
            cells.append(" / ".join(found))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ranking_md(group: dict, dataset: str = "") -> str:
    """RobRank's columns and ERS per method (mean ± std over seeds), where the cells ran them, with
    the clean R@1 and NMI (RobRank's k-means) beside them; on Fashion-MNIST under ``rob28``, RobRank's
    published rows below ours."""
    from ..attacks.ranking import ERS_COLUMNS as COLUMNS, ers
    from ..evaluation.ranking import PUBLISHED_FASHION

    rows = {m: [r["robrank"] for r in runs if "robrank" in r] for m, runs in group["runs"].items()}
    rows = {m: found for m, found in rows.items() if found}
    if not rows:
        return ""
    per_epoch = {m: [r["seconds_per_epoch"] for r in runs if "seconds_per_epoch" in r] for m, runs in group["runs"].items()}
    first = next(iter(rows.values()))[0]
    lines = [f"RobRank's ranking attacks (profile {first['profile']}, {first['queries']} queries; ERS higher is "
             f"more robust), mean ± std over seeds where there are several:\n",
             "| method | seeds | R@1 | NMI | ERS | " + " | ".join(COLUMNS) + " | s / epoch |",
             "|---|---|---|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for method, found in rows.items():
        cells = ([mean_std([f["clean"]["recall@1"] for f in found]), mean_std([f["clean"]["robrank_nmi"] for f in found]),
                  mean_std([f["ers"] if f["ers"] is not None else float("nan") for f in found])]
                 + [mean_std([f["columns"][c] for f in found]) for c in COLUMNS])
        seconds = f"{np.mean(per_epoch[method]):.0f}" if per_epoch.get(method) else ""
        shown = [f"{m:.3g} ± {s:.2g}" if len(found) > 1 else f"{m:.3g}" for m, s in cells]  # one seed: no spread
        lines.append(f"| {method} | {len(found)} | " + " | ".join(shown) + f" | {seconds} |")
    if dataset == "fashion" and first["profile"] == "rob28":
        for method, row in PUBLISHED_FASHION.items():
            values = [row["recall@1"], row["nmi"], ers(dict(zip(COLUMNS, row["columns"]))), *row["columns"]]
            lines.append(f"| RobRank's {method} (published) | | " + " | ".join(f"{v:.3g}" for v in values) + " | |")
    failed = [f"{method} seed {f['seed']} (ES:R {f['checks']['es_start']['other']['ES:R']:.1f} against "
              f"{f['columns']['ES:R']:.1f})" for method, found in rows.items() for f in found
              if not f.get("checks", {}).get("es_start", {}).get("passed", True)]
    if failed:
        lines.append(f"\nES from the other start direction is stronger (`es_start` check failed; the ES columns "
                     f"and ERS above are optimistic) for: {', '.join(failed)}.")
    return "\n".join(lines) + "\n"


def _certified(group: dict) -> dict[str, list[dict]]:
    """method -> the cells' certify summaries (where the benchmark config asked for them)."""
    rows = {m: [r["certify"] for r in runs if "certify" in r] for m, runs in group["runs"].items()}
    return {m: found for m, found in rows.items() if found}


def _certify_md(rows: dict[str, list[dict]]) -> str:
    """Certified fractions per radius, mean over seeds, with the smoothed model's clean figures."""
    first = next(iter(rows.values()))[0]
    radii = first["radii"]
    head = [f"assign. r={r:g}" for r in radii] + [f"R@1 r={r:g}" for r in radii]
    lines = [f"Center-smoothing certificates (sigma {first['sigma']:g}, {first['images']} test images; `robustdml "
             f"certify`, docs/certify.md): the fraction of test images whose k-means assignment, and whose correct "
             f"R@1 answer, is certified within each L2 radius; mean over seeds. The abstain rate is the fraction "
             f"of test images that get no certificate at all. {SMOOTHED_VS_CERTIFIED}.\n",
             "| method | seeds | abstain rate | smoothed NMI | smoothed R@1 | " + " | ".join(head) + " | s / image |",
             "|---|---|---|---|---|" + "---|" * (len(head) + 1)]
    for method, found in rows.items():
        values = ([np.mean([f["abstained"] / f["images"] for f in found]), np.mean([f["clean"]["nmi"] for f in found]),
                   np.mean([f["clean"]["recall@1"] for f in found])]
                  + list(np.mean([f["certified_assignment"] for f in found], axis=0))
                  + list(np.mean([f["certified_recall_at_1"] for f in found], axis=0)))
        seconds = np.mean([f["seconds_per_image"] for f in found])
        lines.append(f"| {method} | {len(found)} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {seconds:.2f} |")
    return "\n".join(lines) + "\n"


def _checks_md(group: dict) -> str:
    names = list(dict.fromkeys(c for runs in group["runs"].values() for r in runs for c in r.get("checks", {})))
    lines = ["| method | seed | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for method, runs in group["runs"].items():
        for r in runs:
            states = [{True: "passed", False: "**FAILED**", None: "skipped"}[r.get("checks", {}).get(c, {}).get("passed")]
                      for c in names]
            lines.append(f"| {method} | {r['cell']['seed']} | " + " | ".join(states) + " |")
    meaning = "\n".join(f"- `{name}`: {CHECK_MEANING[name]}" for name in names if name in CHECK_MEANING)
    return "\n".join(lines) + (f"\n\n### {CHECKS_HEADING}\n\nA figure whose check failed is an upper bound, marked "
                               f"{UPPER_BOUND}.\n\n" + meaning if meaning else "")


CHECKS_HEADING = "What each check asks"
CHECKS_LINK = f"[what each check asks](#{CHECKS_HEADING.lower().replace(' ', '-')})"


def _setting(value) -> str:
    """A setting as a person reads it: a string bare, anything else (numbers, lists, dicts) as JSON."""
    return f"`{value if isinstance(value, str) else json.dumps(value)}`"


def _key_value_md(rows: dict, head: tuple[str, str] = ("key", "value")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {k} | {_setting(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


def _configs_md(ok: list[dict]) -> str:
    """The software of the first cell, the training settings all cells share, and per cell what differs."""
    configs = {"-".join(str(v) for v in c["cell"].values()): c.get("config", {}) for c in ok}
    keys = list(dict.fromkeys(k for cfg in configs.values() for k in cfg))
    shared = {k: v for k in keys if len({json.dumps(cfg.get(k), sort_keys=True) for cfg in configs.values()}) == 1
              for v in [next(iter(configs.values())).get(k)]}
    parts = ["## Configs and software\n", "Software (of the first cell):\n", _key_value_md(ok[0].get("versions", {}),
                                                                                       ("package", "version")), "",
             "Training settings every cell shares:\n", _key_value_md(shared, ("setting", "value")), ""]
    differing = [k for k in keys if k not in shared]
    if differing:
        parts += ["Per cell, the settings that differ:\n",
                  "| cell | " + " | ".join(differing) + " |", "|---|" + "---|" * len(differing)]
        parts += [f"| {name} | " + " | ".join(_setting(cfg.get(k)) for k in differing) + " |"
                  for name, cfg in configs.items()]
    return "\n".join(parts) + "\n"
