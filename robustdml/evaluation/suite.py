"""Attack suites: which attacks run, with which optimiser and options, at which budgets.

The named suites are fixed and take no parameters but the threat model, like AutoAttack's standard
version (Croce & Hein, arXiv 2003.01690):

- ``strong`` — what every reported figure uses. APGD (100 iterations) on one objective of each
  family: embedding displacement (label-free), centroid margin (clustering), the label-aware
  balanced centroid attack, the label-aware balanced feature attack, and retrieval with both its
  losses (the margin and the softmax over the gallery, as AutoAttack pairs margin and cross-entropy);
  Square (gradient-free, 500 queries) on the balanced centroid objective; uniform noise; transfer
  from a surrogate when one is given. The candidates of every eps are also combined per sample at
  the clustering level (:mod:`robustdml.evaluation.combine`). On an ensemble, the balanced centroid
  attack also runs with member-reweighted objectives and against each member alone (transferred).
  Budgets 0.5, 1 and 1.5 times the threat model's eps: everything at the threat model's eps, the
  strongest entries (one per metric of the checks) and the noise floor at the others.
- ``complete`` — the same with every objective (targeted centroid toward the nearest and a random
  other cluster, feature toward the nearest other class) and Square on the retrieval objective too;
  slower, for a final check.
- ``fast`` — validation during training: APGD, 10 iterations, on the balanced centroid and the
  retrieval objectives, at the threat model's eps, no checks.

A suite can also be written out: ``attacks`` as names, or entries ``{label, attack, **options}``.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field

from ..attacks import ATTACKS, Attack, Norm, ThreatModel, check_eps, create_attack, format_budget, parse_eps
from ..attacks.optim import Optimizer
from ..errors import ConfigError
from ..registry import Registry, check_options


@dataclass(frozen=True)
class AttackSpec:
    """One entry of a suite: ``label`` (its name in results), the registered ``attack`` and its
    options; ``member``: on an ensemble, the member the attack is crafted on (then transferred to
    the ensemble), None for the model itself."""

    label: str
    attack: str
    options: dict = field(default_factory=dict)
    member: int | None = None

    @property
    def optimizer(self) -> str:
        return self.options.get("optimizer", Optimizer.PGD.value)


_APGD = {"optimizer": "apgd"}
_SQUARE = {"optimizer": "square", "steps": 500}
# Every objective, APGD and Square on each label-aware one: for a complete (and slow) evaluation.
_COMPLETE = [
    {"label": "displacement", "attack": "displacement", **_APGD},
    {"label": "centroid", "attack": "centroid", **_APGD},
    {"label": "centroid-nearest", "attack": "centroid-nearest", **_APGD},
    {"label": "centroid-random", "attack": "centroid-random", **_APGD},
    {"label": "centroid-balanced", "attack": "centroid-balanced", **_APGD},
    {"label": "feature-nearest", "attack": "feature-nearest", **_APGD},
    {"label": "feature-balanced", "attack": "feature-balanced", **_APGD},
    {"label": "retrieval", "attack": "retrieval", **_APGD},
    {"label": "retrieval-softmax", "attack": "retrieval", "loss": "softmax", **_APGD},
    {"label": "square-centroid-balanced", "attack": "centroid-balanced", **_SQUARE},
    {"label": "square-retrieval", "attack": "retrieval", **_SQUARE},
    {"label": "noise", "attack": "noise"},
    {"label": "transfer", "attack": "transfer", **_APGD},
]
# The fixed suite every reported figure uses: one objective per family (label-free, clustering
# margin, label-aware clustering, label-aware feature, retrieval with two losses), Square on the label-aware
# clustering objective, the floor and the transfer control.
_STRONG = [e for e in _COMPLETE if e["label"] in ("displacement", "centroid", "centroid-balanced", "feature-balanced",
                                                  "retrieval", "retrieval-softmax", "square-centroid-balanced", "noise", "transfer")]
_LABEL_AWARE = ["centroid-balanced", "feature-balanced", "retrieval"]


@dataclass
class AttackSuite:
    """Which attacks run, at which budgets, with which settings.

    Args:
        attacks: a named suite (``"strong"``, ``"fast"``), ``"all"`` (every registered attack), a
            list of attack names, or a list of entries ``{"label": ..., "attack": ..., **options}``.
        eps: budgets in [0, 1] pixel units; ``None``: ``eps_scale`` times the threat model's eps.
        eps_scale: budgets as multiples of the threat model's eps (default [1.0]).
        steps, restarts: iterations and random restarts of every attack whose entry does not set its own.
        norm: ``"linf"`` or ``"l2"``; ``None``: the threat model's norm.
        step_factor: PGD step size = ``step_factor * eps / steps`` (2.5 as in Madry et al.; APGD adapts its own).
        seed: seed of the random starts and of planned targets.
        batch_size: images perturbed at once.
        attack_kwargs: label -> options of the attack's own constructor, laid over the entry's.
        combine: also combine the candidates per sample at the clustering level, at every eps.
        sweep_strongest: at the eps values other than the main one, run only the entries that were
            strongest at the main eps (one per metric of the checks), and the noise floor.
        ensemble_reweighted: labels also run with member-reweighted objectives on an ensemble.
        member_transfer: labels also run against each member of an ensemble alone, transferred to it.
        checks: run the honest-evaluation checks.

    Example:
        >>> AttackSuite("strong")                      # the fixed suite every reported figure uses
        >>> AttackSuite(["displacement", "centroid", "noise"], eps=[0.05, 0.1], steps=10)
    """

    attacks: list | str = "strong"
    eps: list[float] | None = None
    eps_scale: list[float] | None = None
    steps: int = 10
    restarts: int = 1
    norm: str | None = None
    step_factor: float = 2.5
    seed: int = 0
    batch_size: int = 256
    attack_kwargs: dict = field(default_factory=dict)
    combine: bool = False
    sweep_strongest: bool = False
    ensemble_reweighted: list[str] = field(default_factory=list)
    member_transfer: list[str] = field(default_factory=list)
    checks: bool = True

    def __post_init__(self):
        if self.eps is not None:  # 0.1, "0.1" or "8/255", one-line errors otherwise
            self.eps = [parse_eps(e) for e in (self.eps if isinstance(self.eps, (list, tuple)) else [self.eps])]
        if isinstance(self.attacks, str) and self.attacks in NAMED:
            name, named = self.attacks, NAMED[self.attacks]
            for key, value in {**named, "attack_kwargs": {}}.items():
                if key != "attacks" and getattr(self, key) != _default(key):
                    raise ConfigError(f"the {name} suite is fixed: {key} cannot be set (list the attacks to change it)")
                setattr(self, key, value)
            self.name = name
        else:
            self.name = None
        self._validate()

    def _validate(self) -> None:
        specs = self.specs()
        if not specs:
            raise ConfigError("the attack suite is empty: name at least one attack, a named suite or all")
        labels = [s.label for s in specs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"attack labels must be unique in a suite, got {labels}")
        for values, what in ((self.eps, "eps"), (self.eps_scale, "eps_scale")):
            if values is not None and (not values or any(not e >= 0 for e in values)):
                raise ConfigError(f"{what} values must be >= 0 (at least one), got {values}")
        if self.norm is not None and self.norm not in {n.value for n in Norm}:
            raise ConfigError(f"norm must be one of {', '.join(n.value for n in Norm)}, not {self.norm!r}")
        for e in self.eps or []:
            check_eps(e, self.norm or Norm.LINF)
        for key, value in (("steps", self.steps), ("restarts", self.restarts), ("batch_size", self.batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.attack_kwargs, dict) or not all(isinstance(v, dict) for v in self.attack_kwargs.values()):
            raise ConfigError("attack_kwargs must map attack labels to mappings of options")
        unknown = (set(self.attack_kwargs) | set(self.ensemble_reweighted) | set(self.member_transfer)) - set(labels)
        if unknown:
            raise ConfigError(f"attack_kwargs / ensemble_reweighted / member_transfer name {', '.join(sorted(unknown))}, "
                              f"not in the suite ({', '.join(labels)})")
        for spec in specs:
            check_options(ATTACKS.lookup(spec.attack), spec.options, f"attack '{spec.label}'")
            self.build(spec, 0.1, ThreatModel(0.1))  # the constructor checks the option values

    @classmethod
    def from_dict(cls, data: dict, **defaults) -> "AttackSuite":
        """From a config section (``attacks``, ``eps``, ``steps``, ...); ``defaults`` fill what it leaves out."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"attack section: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        merged = {**defaults, **data}
        if merged.get("eps_scale") is not None:
            merged["eps_scale"] = [float(e) for e in merged["eps_scale"]]
        return cls(**merged)

    def specs(self) -> list[AttackSpec]:
        entries = self.attacks
        if entries == "all" or (isinstance(entries, list) and "all" in entries):
            entries = list(ATTACKS)
        elif isinstance(entries, str):
            entries = [entries]
        specs = []
        for entry in entries:
            if isinstance(entry, str):
                specs.append(AttackSpec(entry, entry, dict(self.attack_kwargs.get(entry, {}))))
            elif isinstance(entry, dict) and "attack" in entry:
                label = entry.get("label", entry["attack"])
                options = {k: v for k, v in entry.items() if k not in ("label", "attack")}
                specs.append(AttackSpec(label, entry["attack"], {**options, **self.attack_kwargs.get(label, {})}))
            else:
                raise ConfigError(f"an attack entry is a name or a mapping with 'attack', not {entry!r}")
        return specs

    def eps_values(self, threat: ThreatModel) -> list[float]:
        if self.eps is None and self.norm is not None and Norm(self.norm) is not threat.norm:
            raise ConfigError(f"norm {self.norm} with no eps of its own would reuse the dataset's "
                              f"{format_budget(threat.eps, threat.norm)} budget: give {Norm(self.norm).symbol} "
                              f"budgets with eps (e.g. --eps 0.5 1.0)")
        if self.eps is not None:
            return sorted(set(self.eps))
        # 6 significant digits, as eps keys are written: 1.0 x eps is the threat model's eps exactly
        return sorted({float(f"{s * threat.eps:.6g}") if s != 1.0 else threat.eps for s in (self.eps_scale or [1.0])})

    def main_eps(self, threat: ThreatModel) -> float:
        """The eps the worst case is reported at: the threat model's, else the largest of the suite."""
        values = self.eps_values(threat)
        return next((e for e in values if abs(e - threat.eps) < 1e-9), values[-1])

    def build(self, spec: AttackSpec, eps: float, threat: ThreatModel, steps_scale: int = 1,
              extra_restarts: int = 0, **extra) -> Attack:
        """The attack of ``spec`` at ``eps``; ``steps_scale`` / ``extra_restarts`` make it stronger (the checks)."""
        options = {**spec.options, **extra}
        steps = int(options.pop("steps", self.steps)) * steps_scale
        restarts = int(options.pop("restarts", self.restarts)) + extra_restarts
        if options.get("optimizer", "pgd") == "pgd" and "step_size" not in options and eps > 0:
            options["step_size"] = self.step_factor * eps / steps
        return create_attack(spec.attack, eps, steps=steps, restarts=restarts, norm=self.norm or threat.norm,
                             seed=self.seed, **options)

    def to_dict(self) -> dict:
        return {"suite": self.name, **asdict(self)}


def _default(key: str):
    f = AttackSuite.__dataclass_fields__[key]
    return f.default if f.default is not MISSING else f.default_factory()


#: the named suites: name -> the settings it fixes
NAMED: Registry = Registry("attack suite")
NAMED.update({
    "strong": {"attacks": _STRONG, "eps_scale": [0.5, 1.0, 1.5], "steps": 100, "restarts": 1, "combine": True,
               "sweep_strongest": True, "ensemble_reweighted": ["centroid-balanced"],
               "member_transfer": ["centroid-balanced"]},
    "complete": {"attacks": _COMPLETE, "eps_scale": [0.5, 1.0, 1.5], "steps": 100, "restarts": 1, "combine": True,
                 "sweep_strongest": True, "ensemble_reweighted": _LABEL_AWARE, "member_transfer": _LABEL_AWARE},
    "fast": {"attacks": [{"label": "centroid-balanced", "attack": "centroid-balanced", **_APGD},
                         {"label": "retrieval", "attack": "retrieval", **_APGD}],
             "eps_scale": [1.0], "steps": 10, "restarts": 1, "checks": False},
})
