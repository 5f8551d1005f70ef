"""The honest-evaluation checks of a robust evaluation (:mod:`.checks` holds each check's rule):
the reruns with more iterations and more restarts of the individually strongest attacks, the noise
floor, monotonicity in eps, and the transfer, Square and member-transfer comparisons."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..attacks import ATTACKS
from . import checks as honest
from .metrics import metric_names
from .worst import eps_key, worst_of

if TYPE_CHECKING:
    from .robust import SuiteRun, _Outcome


def run_checks(run: "SuiteRun", results: dict, worst: dict, keys: list[str], main_eps: float,
               at_main: dict[str, "_Outcome"], key_attacks: list[str]) -> tuple[dict, dict]:
    """The honest-evaluation checks; the reruns with more iterations and restarts happen here, on the
    attacks that were individually strongest at the main eps (one per check metric), with the
    combinations recomputed from the rerun candidates. Returns (checks, convergence curves)."""
    gradient = run.gradient_labels()
    found = {}
    if "noise" in results and gradient:
        found["beats_noise"] = honest.beats_noise(
            results, keys, {a: ATTACKS[run.specs[a].attack].lowers for a in gradient})
    found["monotone_in_eps"] = honest.monotone_in_eps(worst, keys)
    convergence = {}
    if gradient:
        stronger, convergence = _reruns(run, worst[eps_key(main_eps)], main_eps, at_main, key_attacks)
        found.update(stronger)
    found.update(_comparisons(run, results, keys, gradient))
    return found, convergence


def _reruns(run: "SuiteRun", base: dict, main_eps: float, at_main: dict, key_attacks: list[str]) -> tuple[dict, dict]:
    """``more_steps`` (and ``converged``), ``more_restarts``: the key attacks rerun stronger at the main eps."""
    from .robust import COMBOS
    found, convergence = {}, {}
    steps = run.suite.build(run.specs[key_attacks[0]], main_eps, run.threat).steps
    trace_at = tuple(sorted({max(1, steps // 4), max(1, steps // 2), steps, 2 * steps}))
    for check, options in (("more_steps", {"steps_scale": 2, "trace_at": trace_at}),
                           ("more_restarts", {"extra_restarts": 1})):
        rerun = {a: run.run(a, main_eps, **options) for a in key_attacks}
        outcomes = {**{k: v for k, v in at_main.items() if k not in COMBOS}, **rerun}
        outcomes.update(run.combinations(outcomes))
        again, _ = worst_of({a: o.metrics for a, o in outcomes.items()})
        what = {"eps": main_eps, "rerun": key_attacks,
                **({"steps": 2 * steps} if check == "more_steps" else {"restarts": run.suite.restarts + 1})}
        found[check] = honest.not_weaker_when_stronger(base, again, **what)
        if check == "more_steps":
            found["converged"] = honest.converged(base, again, **what)
            convergence = {a: {"iterations": list(trace_at),
                               **{m: [o.curve[i][m] for i in trace_at if i in o.curve] for m in metric_names("check")}}
                           for a, o in rerun.items() if o.curve}
    return found, convergence


def _comparisons(run: "SuiteRun", results: dict, keys: list[str], gradient: list[str]) -> dict:
    """Transfer, Square and member-transfer entries must not beat the white-box gradient ones."""
    others = [a for a in results if a in run.specs]
    found = {}
    for check, group in (("transfer_not_stronger", [a for a in others if run.specs[a].attack == "transfer"]),
                         ("square_not_stronger", [a for a in others if run.specs[a].optimizer == "square"]),
                         ("member_transfer_not_stronger", [a for a in others if run.specs[a].member is not None])):
        if group or check == "transfer_not_stronger":
            found[check] = honest.not_stronger_than_white_box(results, keys, gradient, group, check,
                                                              absent=_why_nothing_to_compare(run, check))
    return found


def _why_nothing_to_compare(run: "SuiteRun", check: str) -> str:
    if check != "transfer_not_stronger":
        return "nothing to compare"
    if any(s.attack == "transfer" for s in run.suite.specs()):
        return "no surrogate model given (--surrogate)"
    return "the suite has no transfer attack"
