"""The benchmark report: Markdown and a self-contained HTML file (PNGs embedded), rebuilt from the
cells' JSON files alone. Per dataset and backbone: a table like the paper's (rows: methods; clean
and adversarial NMI, F1, R@1 as mean ± std over seeds), robustness curves against eps, a t-SNE of
clean vs. adversarial test embeddings for standard vs. EAT, the honest-evaluation checks, and the
configs and software versions used."""

from __future__ import annotations

import base64
import html
import json
import re
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..attacks import Norm  # noqa: E402
from ..evaluation.metrics import metric_names  # noqa: E402
from ..files import write_text  # noqa: E402
from ..methods import METHODS  # noqa: E402
from .plots import _save, plot_convergence  # noqa: E402
from ..evaluation.checks import CHECK_MEANING, UPPER_BOUND, failed_metrics, failure_note, upper_bounds  # noqa: E402
from ..evaluation.certify import SMOOTHED_VS_CERTIFIED  # noqa: E402
from .summary import mean_std, summarize  # noqa: E402

def load_cells(out_dir: str | Path) -> list[dict]:
    cells = []
    for path in sorted(Path(out_dir).glob("cells/*/result.json")):
        try:
            cells.append(json.loads(path.read_text(encoding="utf-8")))
        except ValueError:
            cells.append({"status": "failed", "error": f"unreadable {path}", "cell": {"name": path.parent.name}})
    return cells


def _ordered(methods):
    """Methods in registration order (standard first), unknown names last."""
    order = list(METHODS)
    return sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))


def group_tables(cells: list[dict]) -> dict[tuple[str, str], dict]:
    """(dataset, backbone) -> {"eps": main eps key, "rows": method -> column -> (mean, std, n), "runs": ...}."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for c in cells:
        if c.get("status") == "ok":
            groups[(c["cell"]["dataset"], c["cell"]["backbone"])][c["cell"]["method"]].append(c)
    tables = {}
    for key, by_method in groups.items():
        eps = next(iter(by_method.values()))[0]["main_eps_key"]
        rows = summarize({method: by_method[method] for method in _ordered(by_method)}, eps)
        tables[key] = {"eps": eps, "rows": rows, "runs": {m: by_method[m] for m in _ordered(by_method)}}
    return tables


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


def _ranking_md(group: dict, dataset: str = "") -> str:
    """RobRank's columns and ERS per method (mean ± std over seeds), where the cells ran them, with
    the clean R@1 and NMI (RobRank's k-means) beside them; on Fashion-MNIST under ``rob28``, RobRank's
    published rows below ours."""
    from ..attacks.ranking import COLUMNS, ers
    from ..evaluation.ranking import PUBLISHED_FASHION

    rows = {m: [r["robrank"] for r in runs if "robrank" in r] for m, runs in group["runs"].items()}
    rows = {m: found for m, found in rows.items() if found}
    if not rows:
        return ""
    per_epoch = {m: [r["seconds_per_epoch"] for r in runs if "seconds_per_epoch" in r] for m, runs in group["runs"].items()}
    first = next(iter(rows.values()))[0]
    lines = [f"RobRank's ranking attacks (profile {first['profile']}, {first['queries']} queries; ERS higher is "
             f"more robust), mean ± std over seeds:\n",
             "| method | seeds | R@1 | NMI | ERS | " + " | ".join(COLUMNS) + " | s / epoch |",
             "|---|---|---|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for method, found in rows.items():
        cells = ([mean_std([f["clean"]["recall@1"] for f in found]), mean_std([f["clean"]["robrank_nmi"] for f in found]),
                  mean_std([f["ers"] if f["ers"] is not None else float("nan") for f in found])]
                 + [mean_std([f["columns"][c] for f in found]) for c in COLUMNS])
        seconds = f"{np.mean(per_epoch[method]):.0f}" if per_epoch.get(method) else ""
        lines.append(f"| {method} | {len(found)} | " + " | ".join(f"{m:.3g} ± {s:.2g}" for m, s in cells) + f" | {seconds} |")
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


def _certify_plot(rows: dict[str, list[dict]], path: Path) -> Path:
    from .plots import plot_certified
    means = {m: {"radii": found[0]["radii"],
                 "certified_assignment": list(np.mean([f["certified_assignment"] for f in found], axis=0)),
                 "certified_recall_at_1": list(np.mean([f["certified_recall_at_1"] for f in found], axis=0))}
             for m, found in rows.items()}
    return plot_certified(means, path)


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


def _key_value_md(rows: dict, head: tuple[str, str] = ("key", "value")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {k} | `{json.dumps(v) if not isinstance(v, str) else v}` |" for k, v in rows.items()]
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
        parts += [f"| {name} | " + " | ".join(f"`{json.dumps(cfg.get(k))}`" for k in differing) + " |"
                  for name, cfg in configs.items()]
    return "\n".join(parts) + "\n"


def build_report(out_dir: str | Path) -> tuple[Path, Path]:
    """Write OUT/report.md and OUT/report.html (PNGs under OUT/report/, embedded in the HTML)."""
    out_dir = Path(out_dir)
    cells = load_cells(out_dir)
    tables = group_tables(cells)
    fig_dir = out_dir / "report"
    sections: list[tuple[str, str]] = []  # (kind, content): "md" text or "img" path
    sections.append(("md", f"# robustdml benchmark report\n\n{sum(c.get('status') == 'ok' for c in cells)} cells "
                           f"finished, {sum(c.get('status') == 'failed' for c in cells)} failed.\n"))
    for (dataset, backbone), group in tables.items():
        slug = f"{dataset}-{backbone}"
        marks, bound_notes = _upper_bound_marks(group)
        labels, stale_notes = _stale_labels(group)
        notes = "".join(f"\n{n}\n" for n in bound_notes + stale_notes)
        sections.append(("md", f"## {dataset}, {backbone}\n\n{_suite_md(group)}\nClean and adversarial metrics "
                               f"(adv: the worst case at {_budget(group)}), mean ± std over seeds where there are "
                               f"several:\n\n" + _table_md(group["rows"], marks, labels) + "\n" + notes))
        sections.append(("md", "The attack that gave each worst case:\n\n" + _worst_by_md(group) + "\n"))
        sections.append(("md", "Worst case against eps (the eps sweep):\n"))
        sections.append(("img", str(_curves(group, fig_dir / f"{slug}-curves.png"))))
        convergence = _convergence(group, fig_dir / f"{slug}-convergence.png")
        if convergence:
            sections.append(("md", "Convergence of the strongest attacks (the checks' rerun with doubled iterations):\n"))
            sections.append(("img", str(convergence)))
        tsne = _tsne(group, fig_dir / f"{slug}-tsne.png")
        if tsne:
            sections.append(("md", "t-SNE of the same test images, clean and adversarial:\n"))
            sections.append(("img", str(tsne)))
        sections.append(("md", f"Honest-evaluation checks ({CHECKS_LINK}):\n\n" + _checks_md(group) + "\n"))
        ranking = _ranking_md(group, dataset)
        if ranking:
            sections.append(("md", ranking))
        certified = _certified(group)
        if certified:
            sections.append(("md", _certify_md(certified)))
            sections.append(("img", str(_certify_plot(certified, fig_dir / f"{slug}-certified.png"))))
    failed = [c for c in cells if c.get("status") == "failed"]
    if failed:
        sections.append(("md", "## Failed cells\n\n" + "\n".join(
            f"- `{c['cell'].get('name') or '-'.join(str(v) for v in c['cell'].values())}`: {c.get('error', '')}"
            for c in failed) + "\n"))
    ok = [c for c in cells if c.get("status") == "ok"]
    if ok:
        sections.append(("md", _configs_md(ok)))

    md, body = [], []
    for kind, content in sections:
        if kind == "md":
            md.append(content)
            body.append(_md_to_html(content))
        else:
            rel = Path(content).relative_to(out_dir)
            md.append(f"![{rel.stem}]({rel.as_posix()})\n")
            data = base64.b64encode(Path(content).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(rel.stem)}" src="data:image/png;base64,{data}">')
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    write_text(md_path, "\n".join(md))
    write_text(html_path, "<!doctype html><html><head><meta charset='utf-8'><title>robustdml report</title><style>"
               "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}</style></head><body>"
               + "\n".join(body) + "</body></html>\n")
    return md_path, html_path


def _md_to_html(text: str) -> str:
    """The small Markdown subset the report writes: headings, tables, bullets, paragraphs, code."""
    out, rows = [], []

    def inline(s):
        s = html.escape(s)
        parts = s.split("`")
        s = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
        parts = s.split("**")
        s = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
        return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', s)

    def flush():
        if rows:
            cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows if not set(r) <= set("|-: ")]
            out.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{inline(c)}</{'th' if i == 0 else 'td'}>" for c in row) + "</tr>"
                for i, row in enumerate(cells)) + "</table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            rows.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            title = line[level:].strip()
            anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")  # as Markdown renderers do
            out.append(f'<h{level} id="{anchor}">{inline(title)}</h{level}>')
        elif line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


def _budget(group: dict) -> str:
    from ..attacks import format_budget
    first = next(iter(group["runs"].values()))[0]
    return format_budget(float(group["eps"]), first.get("settings", {}).get("norm", "linf"))


def print_tables(out_dir: str | Path) -> str:
    """The results tables for the terminal: the suite line, the table with its upper-bound marks and
    stale rows, and the footnotes."""
    out = []
    for (d, b), g in group_tables(load_cells(out_dir)).items():
        marks, bound_notes = _upper_bound_marks(g)
        labels, stale_notes = _stale_labels(g)
        out.append(f"{d}, {b} (adv = worst case at {_budget(g)})\n{_suite_md(g)}" + _table_md(g["rows"], marks, labels)
                   + "".join(f"\n{n}" for n in bound_notes + stale_notes))
    return "\n\n".join(out)
