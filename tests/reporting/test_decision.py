"""The decision rule a benchmark config fixes before its grid runs: margins against the best
single-model defence and the control, thresholds from the larger seed spread, the clean cost, no
verdict short of seeds, upper bounds carried into the verdict; the report applies the rule of the
folder's benchmark.yaml or of a config; bad rules are one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml

from robustdml.benchmark import load_benchmark_config
from robustdml.errors import ConfigError
from robustdml.reporting.decision import DecisionRule, decide, decision_md
from robustdml.reporting.report import build_report, print_tables


def _row(clean: float, worst: tuple[float, float], n: int = 3) -> dict:
    return {"clean nmi": (clean, 0.01, n), "adv nmi": (worst[0], worst[1], n)}


RULE = DecisionRule(readings=["good", "close", "costly"], single=["pgd-at", "hm"], control="control")


def test_a_reading_must_beat_both_baselines_by_two_of_the_larger_spreads():
    rows = {"pgd-at": _row(0.30, (0.10, 0.01)), "hm": _row(0.30, (0.02, 0.01)), "control": _row(0.31, (0.12, 0.02)),
            "good": _row(0.30, (0.20, 0.01)),      # +0.10 over pgd-at (2 sd: 0.02), +0.08 over control (0.04)
            "close": _row(0.31, (0.15, 0.02)),     # +0.05 over pgd-at (0.04), +0.03 over control (0.04): no
            "costly": _row(0.27, (0.25, 0.01))}    # far ahead, but 0.03 below pgd-at's clean NMI (0.02 allowed)
    found = decide(RULE, rows)
    assert found["best_single"] == "pgd-at" and found["baselines"] == ["pgd-at", "control"]
    assert found["verdicts"] == {"good": "yes", "close": "no", "costly": "no"} and found["winners"] == ["good"]
    close = {c.baseline: c for c in found["comparisons"]["close"]}
    assert close["pgd-at"].beats and not close["control"].beats
    assert close["control"].margin == pytest.approx(0.03) and close["control"].threshold == pytest.approx(0.04)
    costly = {c.baseline: c for c in found["comparisons"]["costly"]}
    assert costly["pgd-at"].margin > costly["pgd-at"].threshold and not costly["pgd-at"].beats
    assert costly["pgd-at"].clean_difference == pytest.approx(-0.03)
    text = decision_md(RULE, rows)
    assert "| good | +0.100 (0.020) | +0.000 | +0.080 (0.040) | -0.010 | yes |" in text
    assert "Best single-model defence: pgd-at" in text and "Verdict: good beats both baselines." in text


def test_no_verdict_short_of_seeds_and_upper_bounds_are_marked():
    rows = {"pgd-at": _row(0.30, (0.10, 0.01)), "control": _row(0.30, (0.10, 0.01), n=1),
            "good": _row(0.30, (0.20, 0.01)), "close": _row(0.30, (0.11, 0.01))}
    rule = DecisionRule(readings=["good", "close", "costly"], single=["pgd-at"], control="control")
    found = decide(rule, rows)
    assert found["verdicts"]["good"].startswith("no verdict yet") and "control: 1 of 3 seeds" in found["verdicts"]["good"]
    assert found["verdicts"]["costly"] == "not run" and found["winners"] == []
    assert "Verdict: pending" in decision_md(rule, rows)
    rows["control"] = _row(0.30, (0.10, 0.01))
    marks = {"good": {"adv nmi": "†"}}
    found = decide(rule, rows, marks)
    assert found["verdicts"]["good"] == "yes†" and found["verdicts"]["close"] == "no"
    assert "provisional" in decision_md(rule, rows, marks)


def _cell(method: str, seed: int, worst: float) -> dict:
    metrics = {"nmi": worst, "f1": 0.3, "ari": 0.1, "recall@1": 0.2}
    return {"status": "ok", "cell": {"dataset": "digits", "backbone": "small-cnn", "method": method, "seed": seed},
            "clean": {"nmi": 0.55, "f1": 0.6, "ari": 0.5, "recall@1": 0.97}, "main_eps_key": "0.1",
            "worst": {"0.1": metrics}, "worst_attack": {"0.1": {m: "centroid" for m in metrics}},
            "settings": {"suite": "strong", "eps": [0.1], "main_eps": 0.1}, "checks": {},
            "config": {"method": method, "seed": seed}, "versions": {"commit": "abc123"}}


def test_the_report_applies_the_rule_of_the_folder_or_of_a_config(tmp_path):
    out = tmp_path / "bench"
    for method, base in [("pgd-at", 0.10), ("eat-control", 0.12), ("eat", 0.30)]:
        for seed in range(3):
            path = out / "cells" / f"digits-small-cnn-{method}-s{seed}" / "result.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_cell(method, seed, base + 0.001 * seed)))
    md, _ = build_report(out)
    assert "## Decision" not in md.read_text()  # no rule, no decision
    grid = {"dataset": ["digits"], "backbone": ["small-cnn"], "method": ["pgd-at", "eat-control", "eat"],
            "seed": [0, 1, 2]}
    rule = {"readings": ["eat"], "single": ["pgd-at"], "control": "eat-control"}
    variants = {"eat-control": {"method": "eat", "method_kwargs": {"split": "none", "transfer": "self"}}}
    config = tmp_path / "b.yaml"
    config.write_text(yaml.safe_dump({"grid": grid, "variants": variants, "decision": rule}))
    loaded = load_benchmark_config(config)
    assert loaded.decision["seeds"] == 3 and loaded.decision["sds"] == 2.0  # resolved: the grid's seeds
    (out / "benchmark.yaml").write_text(yaml.safe_dump({"grid": {**grid, "seed": [0]}, "decision": loaded.decision}))
    md, html = build_report(out)
    assert "| eat | +0.200 (0.002) |" in md.read_text() and "Verdict: eat beats both baselines." in md.read_text()
    assert "Verdict: eat beats both" in html.read_text() and "Verdict: eat beats both" in print_tables(out)
    from robustdml.cli.main import main
    config.write_text(yaml.safe_dump({"grid": grid, "variants": variants, "decision": {**rule, "sds": 500}}))
    assert main(["report", str(out), "--config", str(config)]) == 0
    assert "| eat | +0.200 (0.500) |" in md.read_text() and "no reading beats both" in md.read_text()


@pytest.mark.parametrize("decision, message", [
    ({"readings": ["eat"], "single": ["pgd-at"], "controll": "x"}, "not controll"),
    ({"readings": ["eat"], "single": ["trades"]}, "'trades', which is not one of the grid's methods"),
    ({"readings": [], "single": ["pgd-at"]}, "needs readings"),
    ({"readings": ["eat"]}, "needs single"),
    ({"readings": ["eat"], "single": ["pgd-at"], "metric": "accuracy"}, "metric must be one of"),
    ({"readings": ["eat"], "single": ["pgd-at"], "sds": -1}, "sds must be a number >= 0"),
    ({"readings": ["eat"], "single": ["pgd-at"], "seeds": 1}, "one seed has no spread"),
])
def test_a_bad_rule_is_a_one_line_error(tmp_path, decision, message):
    grid = {"dataset": ["digits"], "backbone": ["small-cnn"], "method": ["pgd-at", "eat"], "seed": [0]}
    config = tmp_path / "b.yaml"
    config.write_text(yaml.safe_dump({"grid": grid, "decision": decision}))
    with pytest.raises(ConfigError, match=message):
        load_benchmark_config(config)
