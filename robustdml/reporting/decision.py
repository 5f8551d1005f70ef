"""A benchmark's decision rule, fixed in its config before any figure is seen, applied to its cells.

The rule (the ``decision`` section of a benchmark config)::

    decision:
      readings: [eat, eat-distill-clean]   # the candidates
      single: [pgd-at, hm]                 # the best of these (highest mean worst-case metric) is one baseline
      control: eat-control                 # the other baseline
      metric: nmi                          # the worst-case metric compared (default nmi)
      sds: 2                               # the margin must exceed this many seed standard deviations
      clean_cost: 0.02                     # ... at a clean cost of at most this against each baseline
      seeds: 3                             # seeds every compared row needs for a verdict (default: the grid's)

A reading *beats* a baseline when its mean worst-case metric exceeds the baseline's by more than
``sds`` times the larger of the two rows' seed standard deviations, and its mean clean metric is at
most ``clean_cost`` below the baseline's. It is the decision's winner when it beats both. Rows with
fewer seeds than ``seeds`` give no verdict (a spread of one or two values decides nothing), and a
verdict resting on an upper bound (a figure whose honest-evaluation check failed) carries its mark.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..evaluation.checks import UPPER_BOUND


@dataclass
class DecisionRule:
    readings: list[str]
    single: list[str] = field(default_factory=list)
    control: str | None = None
    metric: str = "nmi"
    sds: float = 2.0
    clean_cost: float = 0.02
    seeds: int = 3

    @classmethod
    def from_dict(cls, data: dict, methods: list[str] | None = None, grid_seeds: int = 3) -> "DecisionRule":
        """The rule of a config's ``decision`` section; ``methods``: the names the benchmark knows
        (None: not checked, for a rule read back from a benchmark folder)."""
        from ..evaluation.metrics import metric_names
        if not isinstance(data, dict):
            raise ConfigError("decision maps readings, single, control, metric, sds, clean_cost, seeds to values")
        unknown = set(data) - {"readings", "single", "control", "metric", "sds", "clean_cost", "seeds"}
        if unknown:
            raise ConfigError(f"decision takes readings, single, control, metric, sds, clean_cost and seeds, "
                              f"not {', '.join(sorted(unknown))}")
        rule = cls(**{"seeds": grid_seeds, **data})
        if not isinstance(rule.readings, list) or not rule.readings:
            raise ConfigError("decision needs readings: a list of the grid's methods or variants to judge")
        if not isinstance(rule.single, list) or not (rule.single or rule.control):
            raise ConfigError("decision needs single (a list of methods) or control (one method) to compare against")
        named = [*rule.readings, *rule.single, *([rule.control] if rule.control else [])]
        missing = [m for m in named if methods is not None and m not in methods]
        if missing:
            raise ConfigError(f"decision names {missing[0]!r}, which is not one of the grid's methods or variants "
                              f"({', '.join(methods)})")
        if rule.metric not in metric_names("summary"):
            raise ConfigError(f"decision metric must be one of {', '.join(metric_names('summary'))}, "
                              f"got {rule.metric!r}")
        for name in ("sds", "clean_cost"):
            value = getattr(rule, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"decision {name} must be a number >= 0, got {value!r}")
        if isinstance(rule.seeds, bool) or not isinstance(rule.seeds, int) or rule.seeds < 2:
            raise ConfigError(f"decision seeds must be a whole number >= 2 (one seed has no spread), got {rule.seeds!r}")
        return rule

    def to_dict(self) -> dict:
        return {"readings": list(self.readings), "single": list(self.single), "control": self.control,
                "metric": self.metric, "sds": self.sds, "clean_cost": self.clean_cost, "seeds": self.seeds}


@dataclass
class Comparison:
    """One reading against one baseline."""
    baseline: str
    margin: float          # the reading's mean worst-case metric minus the baseline's
    threshold: float       # sds x the larger seed standard deviation
    clean_difference: float  # the reading's mean clean metric minus the baseline's
    beats: bool
    upper_bound: bool      # a figure of either row is an upper bound


def decide(rule: DecisionRule, rows: dict, marks: dict | None = None) -> dict:
    """Apply ``rule`` to a report group's ``rows`` (method -> column -> (mean, std, n)). Returns
    {"best_single", "comparisons": reading -> [Comparison], "verdicts": reading -> text, "pending":
    rows short of seeds, "winners"}; ``marks``: method -> column -> upper-bound mark."""
    marks = marks or {}
    adv, clean = f"adv {rule.metric}", f"clean {rule.metric}"
    present = [m for m in rule.single if m in rows]
    best = max(present, key=lambda m: rows[m][adv][0]) if present else None
    baselines = [b for b in (best, rule.control) if b]
    pending = sorted({m for m in [*rule.readings, *rule.single, *([rule.control] if rule.control else [])]
                      if m not in rows or rows[m][adv][2] < rule.seeds})
    comparisons, verdicts, winners = {}, {}, []
    for reading in rule.readings:
        if reading not in rows:
            verdicts[reading] = "not run"
            continue
        row = rows[reading]
        found = []
        for base in baselines:
            if base not in rows:
                continue
            other = rows[base]
            margin = row[adv][0] - other[adv][0]
            threshold = rule.sds * max(row[adv][1], other[adv][1])
            difference = row[clean][0] - other[clean][0]
            bound = bool(marks.get(reading, {}).get(adv) or marks.get(base, {}).get(adv))
            found.append(Comparison(base, margin, threshold, difference,
                                    margin > threshold and difference >= -rule.clean_cost, bound))
        comparisons[reading] = found
        short = [m for m in [reading, *baselines] if m in pending]
        if short or len(found) < len(baselines) or not found:
            verdicts[reading] = "no verdict yet (" + ", ".join(
                f"{m}: {rows[m][adv][2] if m in rows else 0} of {rule.seeds} seeds" for m in short or baselines) + ")"
            continue
        won = all(c.beats for c in found)
        mark = UPPER_BOUND if any(c.upper_bound for c in found) else ""
        verdicts[reading] = ("yes" if won else "no") + mark
        if won:
            winners.append(reading)
    return {"best_single": best, "baselines": baselines, "comparisons": comparisons, "verdicts": verdicts,
            "pending": pending, "winners": winners}


def decision_md(rule: DecisionRule, rows: dict, marks: dict | None = None) -> str:
    """The decision section: the rule in words, the margins table and the verdict."""
    found = decide(rule, rows, marks)
    metric, baselines = rule.metric, found["baselines"]
    words = (f"A reading beats a baseline when its mean worst-case {metric} exceeds the baseline's by more than "
             f"{rule.sds:g} × the larger of the two rows' seed standard deviations, at a clean-{metric} cost of at "
             f"most {rule.clean_cost:g}; it wins when it beats both " + " and ".join(
                 filter(None, [f"the best single-model defence (of {', '.join(rule.single)})" if rule.single else "",
                               f"the control ({rule.control})" if rule.control else ""])) + ".")
    lines = ["## Decision", "", words, ""]
    if found["best_single"]:
        lines += [f"Best single-model defence: {found['best_single']} (the highest mean worst-case {metric} "
                  f"of {', '.join(m for m in rule.single if m in rows)}).", ""]
    header = "| reading | " + " | ".join(
        f"worst {metric} − {b}'s ({rule.sds:g} sd) | clean {metric} − {b}'s" for b in baselines) + " | wins? |"
    lines += [header, "|---|" + "---|---|" * len(baselines) + "---|"]
    for reading in rule.readings:
        by_base = {c.baseline: c for c in found["comparisons"].get(reading, [])}
        cells = []
        for b in baselines:
            c = by_base.get(b)
            cells += ([f"{c.margin:+.3f} ({c.threshold:.3f}){UPPER_BOUND if c.upper_bound else ''}",
                       f"{c.clean_difference:+.3f}"] if c else ["—", "—"])
        lines.append(f"| {reading} | " + " | ".join(cells) + f" | {found['verdicts'][reading]} |")
    lines.append("")
    if any(c.upper_bound for cs in found["comparisons"].values() for c in cs):
        lines += [f"{UPPER_BOUND} a figure of the comparison is an upper bound (a check failed on one of its seeds): "
                  "a verdict resting on it is provisional.", ""]
    decided = [r for r in rule.readings if found["verdicts"][r] in ("yes", "no", f"yes{UPPER_BOUND}",
                                                                      f"no{UPPER_BOUND}")]
    if found["winners"]:
        lines.append(f"Verdict: {', '.join(found['winners'])} beats both baselines.")
    elif len(decided) == len(rule.readings):
        lines.append("Verdict: no reading beats both baselines.")
    else:
        lines.append(f"Verdict: pending — {len(decided)} of {len(rule.readings)} readings can be judged so far.")
    return "\n".join(lines) + "\n"
