"""The report says how every number was obtained: the suite and its settings, upper bounds marked
with the failed check and its amount, no spread for one seed, readable configs, links that work
wherever the report is moved. Built from cell files alone (no training)."""

from __future__ import annotations

import json
import re
import shutil

from robustdml.evaluation import checks
from robustdml.reporting.report import build_report, print_tables

SUITE = {"suite": "strong", "steps": 100, "restarts": 1, "norm": "linf", "eps": [0.05, 0.1, 0.15], "main_eps": 0.1,
         "attacks": ["centroid-balanced", "retrieval", "noise"],
         "optimizers": {"centroid-balanced": "apgd", "retrieval": "apgd", "noise": "pgd"}}


def _cell(method: str, seed: int, nmi: float, converged_gain: float) -> dict:
    metrics = {"nmi": nmi, "f1": 0.3, "ari": 0.1, "recall@1": 0.2}
    base = dict(metrics)
    stronger = {**metrics, "nmi": nmi - converged_gain}
    return {"status": "ok", "cell": {"dataset": "digits", "backbone": "small-cnn", "method": method, "seed": seed},
            "clean": {"nmi": 0.55, "f1": 0.6, "ari": 0.5, "recall@1": 0.97}, "main_eps_key": "0.1",
            "worst": {"0.05": metrics, "0.1": metrics, "0.15": metrics},
            "worst_attack": {"0.1": {m: "centroid-balanced" for m in metrics}}, "settings": SUITE, "test_images": 896,
            "checks": {"beats_noise": {"passed": True},
                       "converged": checks.converged(base, stronger, eps=0.1, steps=200, rerun=["centroid-balanced"])},
            "config": {"method": method, "seed": seed, "epochs": 30, "lr": 0.001},
            "versions": {"robustdml": "0.1.0", "torch": "2.x", "commit": "abc123"}}


def _bench(tmp_path):
    out = tmp_path / "bench"
    for method, seed, nmi, gain in [("standard", 0, 0.03, 0.0), ("pgd-at", 0, 0.412, 0.048)]:
        path = out / "cells" / f"digits-small-cnn-{method}-s{seed}" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_cell(method, seed, nmi, gain)))
    return out


def test_report_names_the_suite_marks_upper_bounds_and_moves(tmp_path):
    out = _bench(tmp_path)
    md, html = build_report(out)
    text = md.read_text()
    suite_line = ("the strong suite: 3 attacks (centroid-balanced [apgd], retrieval [apgd], noise), 100 iterations, "
                  "1 restart, budgets L∞ 0.05, 0.1, 0.15 (figures at L∞ 0.1), 896 test images")
    assert suite_line in text
    row = next(line for line in text.splitlines() if line.startswith("| pgd-at |"))
    assert "0.412†" in row and "± 0.000" not in text and "±" not in row  # one seed: no spread
    assert next(line for line in text.splitlines() if line.startswith("| standard |")).count("†") == 0
    note = next(line for line in text.splitlines() if line.startswith("† upper bound: pgd-at seed 0"))
    assert "`converged`" in note and "lowered the worst nmi by 0.0480 > 0.02" in note and "--steps 200" in note
    assert "| package | version |" in text and "| setting | value |" in text
    assert json.dumps(_cell("pgd-at", 0, 0.412, 0.048)["config"]) not in text  # no raw one-line JSON
    assert "| digits-small-cnn-pgd-at-0 | `pgd-at` |" in text  # a string setting reads bare, not JSON-quoted
    page = html.read_text()
    assert suite_line in page and "0.412†" in page
    # every link resolves inside the page itself, so a copy elsewhere keeps working
    moved = tmp_path / "elsewhere" / "report.html"
    moved.parent.mkdir()
    shutil.copy(html, moved)
    page = moved.read_text()
    links = re.findall(r'href="([^"]*)"', page)
    assert links and all(link.startswith("#") for link in links)
    anchors = set(re.findall(r'id="([^"]*)"', page))
    assert all(link[1:] in anchors for link in links)
    assert "docs/design.md" not in page and "src=\"data:image/png;base64," in page
    printed = print_tables(out)
    assert "0.412†" in printed and suite_line in printed and "lowered the worst nmi by 0.0480" in printed


def test_ranking_table_gives_no_spread_for_one_seed_and_one_for_two(tmp_path):
    from robustdml.attacks.ranking import ERS_COLUMNS
    out = tmp_path / "bench"
    for method, seeds in (("est", [0]), ("act", [0, 1])):
        for seed in seeds:
            cell = _cell(method, seed, 0.4, 0.0)
            cell["cell"]["dataset"] = "fashion"
            cell["robrank"] = {"profile": "rob28", "queries": 1000, "seed": seed, "ers": 60.0 + seed,
                               "columns": {c: 1.0 + seed for c in ERS_COLUMNS},
                               "clean": {"recall@1": 0.78, "robrank_nmi": 0.66}}
            path = out / "cells" / f"fashion-c2f2-{method}-s{seed}" / "result.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(cell))
    md, _ = build_report(out)
    lines = md.read_text().splitlines()
    est = next(line for line in lines if line.startswith("| est | 1 | 0.78 |"))
    act = next(line for line in lines if line.startswith("| act | 2 | 0.78 ± 0 |"))
    assert "±" not in est and "| 60 |" in est
    assert "| 60.5 ± 0.71 |" in act
