"""Acceptance of the attack suite on the default (undefended) digits model: its white-box attacks
with APGD, as the strong suite runs them (10-step PGD, whose fixed step halves when the steps
double, is not monotone in its iterations on every model: on some, 20 steps end weaker than 10)."""

import json

import pytest

import robustdml
from robustdml.cli.main import main
from robustdml.attacks import ThreatModel
from robustdml.data import evaluation_sets
from robustdml.evaluation.robust import AttackSuite, eps_key, evaluate_robustness

EPS = [0.05, 0.1, 0.15, 0.2]


def _apgd(attack: str) -> dict:
    return {"label": attack, "attack": attack, "optimizer": "apgd"}


@pytest.fixture(scope="module")
def suite(digits_run):
    run, _ = digits_run
    query, gallery = evaluation_sets("digits")
    threat = ThreatModel.of("digits")
    found = evaluate_robustness(robustdml.load_model(run), query, gallery,
                                AttackSuite([*map(_apgd, ("displacement", "centroid", "retrieval")), "noise"], eps=EPS),
                                threat=threat)
    assert found.main_eps == threat.eps
    return found.to_dict(), threat.eps


def test_default_eps_halves_nmi_and_lowers_recall(suite):
    result, default = suite
    worst = result["worst"][eps_key(default)]
    assert worst["nmi"] <= result["clean"]["nmi"] / 2
    assert worst["recall@1"] < result["clean"]["recall@1"]


def test_every_white_box_attack_beats_noise(suite):
    result, _ = suite
    for k in map(eps_key, EPS):
        noise = result["attacks"]["noise"][k]
        for name in ("displacement", "centroid", "retrieval"):
            assert result["attacks"][name][k]["nmi"] < noise["nmi"], (name, k)
            assert result["attacks"][name][k]["recall@1"] < noise["recall@1"], (name, k)
    assert result["checks"]["beats_noise"]["passed"] is True


def test_worst_case_does_not_rise_with_eps(suite):
    result, _ = suite
    for metric in result["clean"]:
        series = [result["worst"][eps_key(e)][metric] for e in EPS]
        assert all(b <= a + 0.02 for a, b in zip(series, series[1:])), (metric, series)
    assert result["checks"]["monotone_in_eps"]["passed"] is True


def test_more_steps_and_restarts_do_not_raise_the_worst_case(suite):
    result, _ = suite
    for check in ("more_steps", "more_restarts"):
        assert result["checks"][check]["passed"] is True, result["checks"][check]["change"]
        assert all(d <= 0.02 for d in result["checks"][check]["change"].values())


def test_attacks_never_improve_a_metric_much(suite):
    result, _ = suite
    for name, per_eps in result["attacks"].items():
        for k, metrics in per_eps.items():
            for metric, value in metrics.items():
                assert value <= result["clean"][metric] + 0.02, (name, k, metric)


def test_worst_is_the_minimum_over_attacks(suite):
    result, _ = suite
    for k, worst in result["worst"].items():
        for metric, value in worst.items():
            assert value == min(per_eps[k][metric] for per_eps in result["attacks"].values())


def test_attack_cli_writes_json_and_plots(digits_run, tmp_path, capsys):
    run, _ = digits_run
    out = tmp_path / "atk"
    code = main(["attack", str(run), "--dataset", "digits", "--eps", "0.1", "--attack", "centroid", "noise",
                 "--steps", "3", "--surrogate", str(run), "--out", str(out), "-q"])
    assert code == 0
    (path,) = out.glob("digits-custom-*.json")  # a custom list of attacks: named by the hash of its settings
    result = json.loads(path.read_text())
    assert set(result) >= {"clean", "attacks", "worst", "checks"}
    assert set(result["attacks"]) == {"centroid", "noise"}
    assert isinstance(result["worst"]["0.1"]["nmi"], float)
    assert (out / path.stem / "metrics_vs_eps.png").stat().st_size > 1000
    assert (out / path.stem / "adversarial_examples.png").stat().st_size > 1000
    assert "WORST" in capsys.readouterr().out
