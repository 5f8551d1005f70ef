"""The honest-evaluation checks (docs/design.md, "Honest-evaluation checks"), as plain functions of
the figures an evaluation produced, so each can be shown to fail on constructed data.

Each returns ``{"passed": True | False | None, ...details}``; ``None`` means the check could not run.
``results`` is attack -> eps key -> metric -> value, as in :class:`~robustdml.evaluation.robust.RobustResult`.
"""

from __future__ import annotations

from .metrics import metric_info, metric_names, worse

TOLERANCE = 0.02  # how far a worst-case metric may move the "wrong" way before a check fails
#: the robrank suite's ES: how much stronger ES from the other start may be (points of ES:R, ES:D)
ES_START_TOLERANCE = {"ES:R": 5.0, "ES:D": 0.1}


def _within(moved: float, tolerance: float) -> bool:
    """``moved <= tolerance``, up to float rounding: on 100 queries a Recall moves in steps of 0.01, and
    0.05 - 0.03 is 0.020000000000000004 — a move of exactly the tolerance passes, as the rules say."""
    return moved <= tolerance + 1e-9


def _toward_defender(metric: str, after: float, before: float) -> float:
    """How much ``after`` is better for the defender than ``before`` (positive: the metric moved the wrong way)."""
    return after - before if metric_info(metric).higher_is_better else before - after


def beats_noise(results: dict, eps_keys: list[str], targets: dict[str, tuple[str, ...]]) -> dict:
    """Every white-box attack (``targets``: attack -> the metrics it is built to lower) does more
    damage than uniform noise of the same eps on its target metrics. eps 0 is exempt."""
    check_metrics = metric_names("check")
    failures, details = [], {}
    for k in eps_keys:
        noise = results["noise"][k]
        for attack, metrics in targets.items():
            if k not in results[attack]:  # not run at this eps
                continue
            m = results[attack][k]
            details.setdefault(k, {})[attack] = {c: m[c] for c in check_metrics}
            if float(k) > 0 and not all(worse(c, m[c], noise[c]) for c in metrics):
                failures.append(f"{attack}@{k}")
        details[k]["noise"] = {c: noise[c] for c in check_metrics}
    return {"passed": not failures, "failures": failures, "figures": details,
            "rule": "each white-box attack lowers its target metric (NMI for clustering attacks, R@1 for the "
                    "retrieval attack) below uniform noise's"}


def monotone_in_eps(worst: dict, eps_keys: list[str], tolerance: float = TOLERANCE) -> dict:
    """The worst case does not get better for the defender as eps grows (``eps_keys`` ascending)."""
    if len(eps_keys) < 2:
        return {"passed": None, "note": "needs at least two eps values"}
    rises = {}
    for metric in worst[eps_keys[0]]:
        series = [worst[k][metric] for k in eps_keys]
        floor = series[0]  # the value worst for the defender at any smaller eps
        rise = 0.0
        for value in series[1:]:
            rise = max(rise, _toward_defender(metric, value, floor))
            floor = value if worse(metric, value, floor) else floor
        rises[metric] = rise
    return {"passed": all(_within(r, tolerance) for r in rises.values()), "max_rise": rises, "tolerance": tolerance}


def not_weaker_when_stronger(base: dict, stronger: dict, tolerance: float = TOLERANCE, **what) -> dict:
    """A stronger run of the white-box attacks (more steps, more restarts) must not give a worst
    case better for the defender than the suite's by more than ``tolerance``; ``what`` is recorded."""
    change = {m: stronger[m] - base[m] for m in base}
    moved = {m: _toward_defender(m, stronger[m], base[m]) for m in base}
    return {"passed": all(_within(d, tolerance) for d in moved.values()), **what, "worst": stronger, "change": change,
            "tolerance": tolerance,
            "rule": "worst case with the stronger attack minus the suite's worst case <= tolerance"}


def converged(base: dict, stronger: dict, tolerance: float = TOLERANCE, **what) -> dict:
    """Doubling the iterations must not find a worst case worse for the defender than the suite's by
    more than ``tolerance``: if it does, the suite's attacks had not converged and its figures are
    too optimistic."""
    gain = {m: -_toward_defender(m, stronger[m], base[m]) for m in base}
    return {"passed": all(_within(g, tolerance) for g in gain.values()), **what, "worst": stronger, "gain": gain,
            "tolerance": tolerance,
            "rule": "suite's worst case minus the worst case with doubled iterations <= tolerance"}


NOT_STRONGER_RULES = {
    "transfer_not_stronger": "a transfer attack is not stronger than the white-box ones (else: masked gradients)",
    "square_not_stronger": "the gradient-free Square attack is not stronger than the gradient attacks on the same "
                           "objectives (else: masked gradients)",
    "member_transfer_not_stronger": "attacks on one ensemble member alone, transferred, are not stronger than the "
                                    "attacks on the whole ensemble (else: the ensemble's gradients are masked)",
}


def not_stronger_than_white_box(results: dict, eps_keys: list[str], white: list[str], others: list[str],
                                check: str = "transfer_not_stronger", tolerance: float = TOLERANCE) -> dict:
    """None of ``others`` (transfer, Square, per-member transfers) beats the worst case of the white-box
    gradient attacks ``white`` by more than ``tolerance``, on the check metrics, at any eps."""
    if not others or not white:
        return {"passed": None, "note": "no surrogate model given (--surrogate)" if check == "transfer_not_stronger"
                else "nothing to compare"}
    gaps = {}
    for k in eps_keys:
        ran = [a for a in others if k in results[a]]
        if not ran:
            continue
        gaps[k] = {}
        for c in metric_names("check"):
            white_values = [results[a][k][c] for a in white if k in results[a]]
            other_values = [results[a][k][c] for a in ran]
            pick = min if metric_info(c).higher_is_better else max
            gaps[k][c] = _toward_defender(c, pick(white_values), pick(other_values))
    return {"passed": all(_within(g, tolerance) for d in gaps.values() for g in d.values()), "gap": gaps, "compared": others,
            "tolerance": tolerance, "rule": NOT_STRONGER_RULES.get(check, "") + "; white-box worst minus theirs <= tolerance"}


def es_start_check(reported: dict[str, float], other: dict[str, float], other_start: str) -> dict:
    """ES (no random start) takes its first step along one fixed embedding direction: a defence can
    learn to resist that start alone (RobRank's EST does), and one start can simply miss what another
    finds. Passed unless ES from the opposite start (``other``) is stronger than the reported one by
    more than :data:`ES_START_TOLERANCE`: a lower ES:R or a larger ES:D. Where it fails, the reported
    ES columns (and the ERS) overstate robustness: the worse of the two starts is the honest figure."""
    gaps = {"ES:R": reported["ES:R"] - other["ES:R"], "ES:D": other["ES:D"] - reported["ES:D"]}
    return {"passed": all(_within(gaps[c], ES_START_TOLERANCE[c]) for c in gaps), "other_start": other_start,
            "other": {c: other[c] for c in gaps}, "gap": gaps, "tolerance": dict(ES_START_TOLERANCE),
            "rule": "ES from the opposite first-step direction is not stronger than the reported ES "
                    "(ES:R not lower, ES:D not larger, beyond the tolerance); else the reported ES "
                    "figures overstate robustness"}
