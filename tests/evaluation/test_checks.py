"""Each honest-evaluation check fails on constructed figures that break its rule, and passes on
figures that keep it; the worst-case reduction picks the value worst for the defender."""

import pytest

from robustdml.evaluation import checks
from robustdml.evaluation.metrics import METRICS, Metric, MetricKind
from robustdml.evaluation.robust import worst_case


def _m(nmi, recall):
    return {"nmi": nmi, "f1": nmi, "ari": nmi, "recall@1": recall}


def test_beats_noise_fails_for_an_attack_weaker_than_noise():
    results = {"noise": {"0.1": _m(0.40, 0.80)},
               "centroid": {"0.1": _m(0.45, 0.70)},     # NMI above noise's: weaker than noise on its target
               "retrieval": {"0.1": _m(0.50, 0.30)}}
    found = checks.beats_noise(results, ["0.1"], {"centroid": ("nmi",), "retrieval": ("recall@1",)})
    assert found["passed"] is False and found["failures"] == ["centroid@0.1"]
    results["centroid"]["0.1"] = _m(0.20, 0.90)  # R@1 above noise is fine for a clustering attack
    assert checks.beats_noise(results, ["0.1"], {"centroid": ("nmi",), "retrieval": ("recall@1",)})["passed"] is True


def test_beats_noise_exempts_eps_zero():
    results = {"noise": {"0": _m(0.4, 0.8)}, "centroid": {"0": _m(0.4, 0.8)}}
    assert checks.beats_noise(results, ["0"], {"centroid": ("nmi",)})["passed"] is True


def test_monotone_in_eps_fails_when_the_worst_case_rises_with_eps():
    keys = ["0.05", "0.1", "0.15"]
    falling = {"0.05": _m(0.30, 0.5), "0.1": _m(0.20, 0.4), "0.15": _m(0.10, 0.3)}
    assert checks.monotone_in_eps(falling, keys)["passed"] is True
    # NMI dips to 0.10 at 0.1 and comes back to 0.25 at 0.15: a rise of 0.15 over the lowest so far
    bumpy = {"0.05": _m(0.30, 0.5), "0.1": _m(0.10, 0.4), "0.15": _m(0.25, 0.3)}
    found = checks.monotone_in_eps(bumpy, keys)
    assert found["passed"] is False and found["max_rise"]["nmi"] == pytest.approx(0.15)
    assert found["max_rise"]["recall@1"] == 0.0
    within = {"0.05": _m(0.30, 0.5), "0.1": _m(0.10, 0.4), "0.15": _m(0.11, 0.3)}  # 0.01 <= tolerance
    assert checks.monotone_in_eps(within, keys)["passed"] is True
    assert checks.monotone_in_eps({"0.1": _m(0.1, 0.1)}, ["0.1"])["passed"] is None


def test_a_move_of_exactly_the_tolerance_passes_despite_rounding():
    keys = ["0.05", "0.1"]
    # Recall@1 on 100 queries from 0.03 back up to 0.05: 0.020000000000000004 in floats, the tolerance exactly
    exact = checks.monotone_in_eps({"0.05": _m(0.3, 0.03), "0.1": _m(0.2, 0.05)}, keys)
    assert exact["max_rise"]["recall@1"] > checks.TOLERANCE and exact["passed"] is True
    assert checks.monotone_in_eps({"0.05": _m(0.3, 0.03), "0.1": _m(0.2, 0.06)}, keys)["passed"] is False
    # doubled iterations lower NMI from 0.07 to 0.05: the tolerance exactly, however floats round it
    assert checks.converged(_m(0.07, 0.5), _m(0.05, 0.5))["gain"]["nmi"] > checks.TOLERANCE
    assert checks.converged(_m(0.07, 0.5), _m(0.05, 0.5))["passed"] is True
    assert checks.converged(_m(0.07, 0.5), _m(0.04, 0.5))["passed"] is False


def test_more_steps_raising_the_worst_case_fails():
    base = _m(0.20, 0.30)
    found = checks.not_weaker_when_stronger(base, _m(0.26, 0.30), steps=20)
    assert found["passed"] is False and found["change"]["nmi"] == pytest.approx(0.06) and found["steps"] == 20
    assert checks.not_weaker_when_stronger(base, _m(0.15, 0.25), steps=20)["passed"] is True


def test_transfer_stronger_than_white_box_fails():
    results = {"centroid": {"0.1": _m(0.30, 0.60)}, "retrieval": {"0.1": _m(0.35, 0.40)},
               "transfer": {"0.1": _m(0.10, 0.50)}}   # transfer NMI 0.10 far below the white-box 0.30
    found = checks.not_stronger_than_white_box(results, ["0.1"], ["centroid", "retrieval"], ["transfer"])
    assert found["passed"] is False and found["gap"]["0.1"]["nmi"] == pytest.approx(0.20)
    results["transfer"]["0.1"] = _m(0.45, 0.70)
    assert checks.not_stronger_than_white_box(results, ["0.1"], ["centroid", "retrieval"], ["transfer"])["passed"] is True
    assert checks.not_stronger_than_white_box(results, ["0.1"], ["centroid"], [])["passed"] is None


def test_square_stronger_than_the_gradient_attacks_fails():
    results = {"centroid-balanced": {"0.1": _m(0.20, 0.50)}, "retrieval": {"0.1": _m(0.30, 0.10)},
               "square-retrieval": {"0.1": _m(0.35, 0.02)}}   # R@1 0.02 vs the gradient attacks' 0.10
    found = checks.not_stronger_than_white_box(results, ["0.1"], ["centroid-balanced", "retrieval"],
                                               ["square-retrieval"], "square_not_stronger")
    assert found["passed"] is False and found["gap"]["0.1"]["recall@1"] == pytest.approx(0.08)
    assert "Square" in found["rule"]


def test_doubled_iterations_finding_a_much_lower_worst_case_fails():
    base = _m(0.20, 0.30)
    found = checks.converged(base, _m(0.15, 0.29), steps=200)
    assert found["passed"] is False and found["gain"]["nmi"] == pytest.approx(0.05)
    assert checks.converged(base, _m(0.19, 0.30), steps=200)["passed"] is True
    assert checks.converged(base, _m(0.25, 0.35), steps=200)["passed"] is True  # no gain at all


def test_worst_case_is_the_minimum_and_names_its_attack():
    results = {"a": {"0.1": {"nmi": 0.3, "recall@1": 0.2}, "0.2": {"nmi": 0.1, "recall@1": 0.5}},
               "b": {"0.1": {"nmi": 0.2, "recall@1": 0.4}, "0.2": {"nmi": 0.15, "recall@1": 0.1}}}
    worst, which = worst_case(results, ["0.1", "0.2"])
    assert worst == {"0.1": {"nmi": 0.2, "recall@1": 0.2}, "0.2": {"nmi": 0.1, "recall@1": 0.1}}
    assert which == {"0.1": {"nmi": "b", "recall@1": "a"}, "0.2": {"nmi": "a", "recall@1": "b"}}


def test_worst_case_of_a_lower_is_better_metric_is_the_maximum():
    METRICS.register(Metric("spread", MetricKind.CLUSTERING, lambda labels, clusters: 0.0, higher_is_better=False))
    try:
        worst, which = worst_case({"a": {"x": {"spread": 0.3}}, "b": {"x": {"spread": 0.7}}}, ["x"])
        assert worst["x"]["spread"] == 0.7 and which["x"]["spread"] == "b"
        found = checks.not_weaker_when_stronger({"spread": 0.7}, {"spread": 0.6})  # lower = better for the defender
        assert found["passed"] is False
    finally:
        METRICS.pop("spread")
