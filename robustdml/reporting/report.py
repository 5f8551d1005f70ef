"""The benchmark report: Markdown and a self-contained HTML file (PNGs embedded), rebuilt from the
cells' JSON files alone. Per dataset and backbone: a table like the paper's (rows: methods; clean
and adversarial NMI, F1, R@1 as mean ± std over seeds), robustness curves against eps, a t-SNE of
clean vs. adversarial test embeddings for standard vs. EAT, the honest-evaluation checks, and the
configs and software versions used (sections in :mod:`.report_tables`, figures in
:mod:`.report_figures`)."""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path

import yaml

from ..errors import ModelFileError
from ..evaluation.results import SCHEMAS
from ..files import write_text
from ..methods import METHODS
from .markdown import _md_to_html
from .report_figures import _certify_plot, _convergence, _curves, _tsne
from .report_tables import (CHECKS_LINK, _certified, _certify_md, _checks_md, _configs_md, _ranking_md, _stale_labels,
                            _suite_md, _table_md, _upper_bound_marks, _worst_by_md)
from .decision import DecisionRule, decision_md
from .summary import summarize


def load_cells(out_dir: str | Path) -> list[dict]:
    """Every cell's result.json (those written before cells recorded a schema read as version 0); an
    unreadable one counts as a failed cell, one of a later schema is a one-line error."""
    cells = []
    for path in sorted(Path(out_dir).glob("cells/*/result.json")):
        try:
            cell = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            cells.append({"status": "failed", "error": f"unreadable {path}", "cell": {"name": path.parent.name}})
            continue
        recorded = cell.get("schema") if isinstance(cell, dict) else None
        if isinstance(recorded, dict) and int(recorded.get("version", 0)) > SCHEMAS["cell"]:
            raise ModelFileError(f"{path}: a benchmark cell of schema version {recorded['version']}, written by a later "
                                 f"robustdml; this one reads up to version {SCHEMAS['cell']}: upgrade robustdml")
        cells.append(cell)
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


def decision_rule(out_dir: str | Path, config: str | Path | None = None) -> DecisionRule | None:
    """The decision rule of a benchmark config's ``decision`` section: ``config``'s, else the one the
    folder's last run wrote to OUT/benchmark.yaml; None where there is none."""
    if config is not None:
        from ..benchmark import load_benchmark_config
        found = load_benchmark_config(config).decision
    else:
        path = Path(out_dir) / "benchmark.yaml"
        try:
            held = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, yaml.YAMLError) as e:
            raise ModelFileError(f"{path}: unreadable ({e}); pass the benchmark's config with --config") from None
        found = held.get("decision") if isinstance(held, dict) else None
    return DecisionRule.from_dict(found) if found else None


def build_report(out_dir: str | Path, rule: DecisionRule | None = None) -> tuple[Path, Path]:
    """Write OUT/report.md and OUT/report.html (PNGs under OUT/report/, embedded in the HTML), with
    ``rule``'s decision (default: the folder's benchmark.yaml's) after each table."""
    out_dir = Path(out_dir)
    rule = rule or decision_rule(out_dir)
    cells = load_cells(out_dir)
    tables = group_tables(cells)
    fig_dir = out_dir / "report"
    sections: list[tuple[str, str]] = []  # (kind, content): "md" text or "img" path
    sections.append(("md", f"# robustdml benchmark report\n\n{sum(c.get('status') == 'ok' for c in cells)} cells "
                           f"finished, {sum(c.get('status') == 'failed' for c in cells)} failed.\n"))
    for (dataset, backbone), group in tables.items():
        sections += _group_sections(dataset, backbone, group, fig_dir, rule)
    failed = [c for c in cells if c.get("status") == "failed"]
    if failed:
        sections.append(("md", "## Failed cells\n\n" + "\n".join(
            f"- `{c['cell'].get('name') or '-'.join(str(v) for v in c['cell'].values())}`: {c.get('error', '')}"
            for c in failed) + "\n"))
    ok = [c for c in cells if c.get("status") == "ok"]
    if ok:
        sections.append(("md", _configs_md(ok)))

    return _write(sections, out_dir)


def _group_sections(dataset: str, backbone: str, group: dict, fig_dir: Path,
                    rule: DecisionRule | None = None) -> list[tuple[str, str]]:
    """The sections of one (dataset, backbone) table: the table, the decision, worst attacks, figures,
    checks, RobRank, certificates."""
    sections = []
    slug = f"{dataset}-{backbone}"
    marks, bound_notes = _upper_bound_marks(group)
    labels, stale_notes = _stale_labels(group)
    notes = "".join(f"\n{n}\n" for n in bound_notes + stale_notes)
    sections.append(("md", f"## {dataset}, {backbone}\n\n{_suite_md(group)}\nClean and adversarial metrics "
                           f"(adv: the worst case at {_budget(group)}), mean ± std over seeds where there are "
                           f"several:\n\n" + _table_md(group["rows"], marks, labels) + "\n" + notes))
    if rule:
        sections.append(("md", decision_md(rule, group["rows"], marks)))
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
    return sections


def _write(sections: list[tuple[str, str]], out_dir: Path) -> tuple[Path, Path]:
    """report.md (images linked) and report.html (images embedded) from the sections."""
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


def _budget(group: dict) -> str:
    from ..attacks import format_budget
    first = next(iter(group["runs"].values()))[0]
    return format_budget(float(group["eps"]), first.get("settings", {}).get("norm", "linf"))


def print_tables(out_dir: str | Path, rule: DecisionRule | None = None) -> str:
    """The results tables for the terminal: the suite line, the table with its upper-bound marks and
    stale rows, the footnotes, and ``rule``'s decision (default: the folder's benchmark.yaml's)."""
    rule = rule or decision_rule(out_dir)
    out = []
    for (d, b), g in group_tables(load_cells(out_dir)).items():
        marks, bound_notes = _upper_bound_marks(g)
        labels, stale_notes = _stale_labels(g)
        out.append(f"{d}, {b} (adv = worst case at {_budget(g)})\n{_suite_md(g)}" + _table_md(g["rows"], marks, labels)
                   + "".join(f"\n{n}" for n in bound_notes + stale_notes)
                   + (f"\n\n{decision_md(rule, g['rows'], marks)}" if rule else ""))
    return "\n\n".join(out)
