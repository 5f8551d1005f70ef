"""The honest-evaluation checks (docs/design.md, "Honest-evaluation checks"), as plain functions of
the figures an evaluation produced, so each can be shown to fail on constructed data.

Each returns ``{"passed": True | False | None, ...details}``; ``None`` means the check could not run.
``results`` is attack -> eps key -> metric -> value, as in :class:`~robustdml.evaluation.robust.RobustResult`.
"""

from __future__ import annotations

from .metrics import METRICS, metric_info, metric_names, worse

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
                                check: str = "transfer_not_stronger", tolerance: float = TOLERANCE,
                                absent: str = "nothing to compare") -> dict:
    """None of ``others`` (transfer, Square, per-member transfers) beats the worst case of the white-box
    gradient attacks ``white`` by more than ``tolerance``, on the check metrics, at any eps; skipped,
    with ``absent`` as its note, where there is nothing to compare."""
    if not others or not white:
        return {"passed": None, "note": absent}
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


# --- what a failed check means for the figures ------------------------------------------------------

UPPER_BOUND = "†"  # the mark of a robust figure whose honest-evaluation check failed

#: what each check asks, in a sentence (the reports carry these instead of a link)
CHECK_MEANING = {
    "beats_noise": "every white-box attack does more damage than uniform noise of the same budget on the metric it "
                   "is built to lower (NMI for clustering attacks, R@1 for retrieval ones); else the attack fails on "
                   "this model",
    "monotone_in_eps": f"the worst case gets no better for the defender as the budget grows (tolerance {TOLERANCE}); "
                       "else the attacks at the larger budgets are too weak",
    "more_steps": f"the strongest attacks rerun with doubled iterations give no better worst case for the defender "
                  f"(tolerance {TOLERANCE})",
    "converged": f"the strongest attacks rerun with doubled iterations lower no worst-case figure by more than "
                 f"{TOLERANCE}; else they had not converged and the figures are too optimistic",
    "more_restarts": f"the strongest attacks rerun with one more random restart give no better worst case for the "
                     f"defender (tolerance {TOLERANCE})",
    **NOT_STRONGER_RULES,
    "es_start": "RobRank's ES rerun from the opposite first-step direction is not stronger than the reported ES "
                f"(by more than {ES_START_TOLERANCE['ES:R']:g} points of ES:R or {ES_START_TOLERANCE['ES:D']:g} of ES:D)",
}


def _over(values: dict, tolerance: float) -> dict:
    """The entries of ``values`` beyond ``tolerance`` (with the rounding allowance of :func:`_within`)."""
    return {k: v for k, v in values.items() if not _within(v, tolerance)}


def _moved(change: dict) -> dict:
    """A rerun's change of each worst-case metric, positive toward the defender."""
    return {m: v if metric_info(m).higher_is_better else -v for m, v in change.items()}


def failed_metrics(name: str, check: dict) -> list[str] | None:
    """The metrics whose robust figures a failed check turns into upper bounds (``None``: all of them;
    ``[]``: the check passed or did not run)."""
    if check.get("passed") is not False:
        return []
    tol = check.get("tolerance", TOLERANCE)
    if name == "converged":
        return sorted(_over(check["gain"], tol))
    if name in ("more_steps", "more_restarts"):
        return sorted(_over(_moved(check["change"]), tol))
    if name == "monotone_in_eps":
        return sorted(_over(check["max_rise"], tol))
    if "gap" in check and name != "es_start":
        return sorted({m for per_eps in check["gap"].values() for m in _over(per_eps, tol)})
    return None


def failure_note(name: str, check: dict) -> str:
    """One line: what the failed check found, by how much, and what to do about it."""
    tol = check.get("tolerance", TOLERANCE)
    bound = "the figures are upper bounds"
    if name == "converged":
        gains = ", ".join(f"{m} by {g:.4f}" for m, g in _over(check["gain"], tol).items())
        steps = check.get("steps")
        rerun = ", ".join(check.get("rerun", [])) or "the strongest attacks"
        return (f"doubling the iterations{f' (to {steps})' if steps else ''} lowered the worst {gains} > {tol:g}: "
                f"{bound}; rerun {rerun} with more iterations" + (f" (--steps {steps} or more)" if steps else ""))
    if name in ("more_steps", "more_restarts"):
        what = "doubled iterations" if name == "more_steps" else "one more restart"
        rises = ", ".join(f"{m} by {v:.4f}" for m, v in _over(_moved(check["change"]), tol).items())
        return (f"{what} raised the worst {rises} > {tol:g} (the attacks are unstable between runs): {bound}; "
                f"rerun {', '.join(check.get('rerun', [])) or 'the strongest attacks'} with more restarts (--restarts 3)")
    if name == "monotone_in_eps":
        rises = ", ".join(f"{m} by {v:.4f}" for m, v in _over(check["max_rise"], tol).items())
        return (f"the worst {rises} > {tol:g} rose with a larger eps: the attacks at the larger budget are too weak; "
                f"{bound}; rerun with more iterations or restarts")
    if name == "beats_noise":
        return (f"{', '.join(check['failures'])} did no more damage than uniform noise of the same budget: the attack "
                f"fails on this model (broken or masked gradients); {bound}; try --attack-option NAME.optimizer=square")
    if name == "es_start":
        gaps = ", ".join(f"{c} by {v:.3g}" for c, v in check["gap"].items() if not _within(v, check["tolerance"][c]))
        return (f"ES from the {check['other_start']} start is stronger ({gaps}): the reported ES columns and the ERS "
                f"overstate robustness; the worse start is the honest figure")
    if "gap" in check:
        worst = max((v, m, k) for k, per_eps in check["gap"].items() for m, v in per_eps.items())
        return (f"{', '.join(check.get('compared', []))} beat the white-box attacks by {worst[0]:.4f} on {worst[1]} at "
                f"eps {worst[2]} (> {tol:g}): the white-box gradients are masked; {bound}")
    return f"failed: {check.get('rule', '')}"


def upper_bounds(checks: dict) -> dict[str, list[str]]:
    """metric -> the failed checks that make its robust figure an upper bound (every metric of
    ``metrics`` for a check that does not single any out)."""
    marks: dict[str, list[str]] = {}
    for name, check in checks.items():
        metrics = failed_metrics(name, check)
        for m in (list(METRICS) if metrics is None else metrics):
            marks.setdefault(m, [])
            if name not in marks[m]:
                marks[m].append(name)
    return marks
