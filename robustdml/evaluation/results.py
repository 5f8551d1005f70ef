"""Results files read back as the objects that wrote them: ``robustdml.load_result(path)`` gives the
:class:`RobustResult`, :class:`RankingResult` or certificates of a JSON file written by ``attack``,
``certify``, ``robustdml.evaluate`` and the others, to print, plot or compare again.

Every file names its kind and schema version (``"schema": {"kind": "robust", "version": 1}``);
files written before the schema was recorded read as version 0 (the same fields). A file of a later
version than this robustdml reads is a one-line error naming both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError

SCHEMAS = {"robust": 1, "ranking": 1, "certify": 1, "cell": 1}  # "cell": a benchmark cell's result.json


def schema(kind: str) -> dict:
    """The ``schema`` entry every saved result of ``kind`` carries."""
    return {"kind": kind, "version": SCHEMAS[kind]}


def kind_of(data: dict) -> tuple[str, int]:
    """(kind, version) of a result's JSON form, inferred for files older than the schema entry."""
    recorded = data.get("schema")
    if isinstance(recorded, dict) and recorded.get("kind") in SCHEMAS:
        return recorded["kind"], int(recorded.get("version", 0))
    if data.get("suite") == "robrank":
        return "ranking", 0
    if "sigma" in data and "certified_assignment" in data:
        return "certify", 0
    if "worst" in data and "attacks" in data:
        return "robust", 0
    raise ModelFileError("not a robustdml result: it has none of the fields of an attack, robrank or certify result")


def check_version(data: dict) -> tuple[str, int]:
    """(kind, version) of a result's JSON form; a one-line error where a later robustdml wrote it."""
    kind, version = kind_of(data)
    if version > SCHEMAS[kind]:
        raise ModelFileError(f"a {kind} result of schema version {version}, written by a later robustdml; this one "
                             f"reads up to version {SCHEMAS[kind]}: upgrade robustdml")
    return kind, version


def from_dict(data: dict):
    """The result object of a result's JSON form."""
    from .ranking import RankingResult

    kind, version = check_version(data)
    if kind == "cell":
        raise ModelFileError("a benchmark cell, which holds several results: `robustdml report FOLDER` reads it")
    cls = {"robust": RobustResult, "ranking": RankingResult, "certify": CertifyResult}[kind]
    try:
        return cls.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"a {kind} result (schema version {version}) with a missing or malformed field: {e}") from None


def load_result(path: str | Path):
    """The result saved at ``path`` (``attack/digits-strong.json``, ``certify/digits-sigma0.25.json``, ...).

    Example:
        >>> result = robustdml.load_result("runs/eat/attack/digits-strong.json")
        >>> print(result.table())
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"no result file at {path}") from None
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not a readable JSON file: {e}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not a robustdml result (a JSON object is expected)")
    try:
        return from_dict(data)
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None


@dataclass
class Sample:
    """A few images under the attack with the worst NMI at the main eps (for the picture grid), and
    that attack's adversarial embeddings of the whole test pool (for the t-SNE)."""

    clean: torch.Tensor | None = None
    adversarial: torch.Tensor | None = None
    attack: str = ""
    eps: float = 0.0
    embeddings: torch.Tensor | None = None


@dataclass
class RobustResult:
    """Everything one robust evaluation found. ``attacks``: label -> eps key -> metric -> value;
    ``worst``/``worst_attack``: eps key -> metric -> the worst value / the label that gave it;
    ``convergence``: label -> {"iterations": [...], metric: [...]} for the attacks rerun with more
    iterations by the checks."""

    clean: dict[str, float]
    attacks: dict[str, dict[str, dict[str, float]]]
    worst: dict[str, dict[str, float]]
    worst_attack: dict[str, dict[str, str]]
    checks: dict[str, dict]
    settings: dict
    main_eps: float
    sample: Sample
    clean_embeddings: torch.Tensor  # (N, D) of the test pool (query, then gallery)
    labels: np.ndarray              # (N,)
    convergence: dict = field(default_factory=dict)
    seconds: float = 0.0
    about: dict = field(default_factory=dict)  # what was evaluated: dataset, test images, model (saved beside)

    def to_dict(self) -> dict:
        """The JSON form: numbers only, no tensors."""
        return {"schema": schema("robust"), "clean": self.clean, "attacks": self.attacks, "worst": self.worst,
                "worst_attack": self.worst_attack, "settings": self.settings, "checks": self.checks,
                "convergence": self.convergence, "seconds": round(self.seconds, 1)}

    @classmethod
    def from_dict(cls, data: dict) -> "RobustResult":
        """A result read back from its JSON form (no embeddings or images: tables and plots, not t-SNE)."""
        own = ("schema", "clean", "attacks", "worst", "worst_attack", "settings", "checks", "convergence", "seconds")
        return cls(data["clean"], data["attacks"], data["worst"], data["worst_attack"], data["checks"],
                   data["settings"], float(data["settings"]["main_eps"]), Sample(), torch.zeros(0, 0),
                   np.zeros(0, dtype=np.int64), data.get("convergence", {}), float(data.get("seconds", 0.0)),
                   {k: v for k, v in data.items() if k not in own})

    @property
    def test_images(self) -> int:
        return int(self.about.get("test_images", len(self.labels)))

    def table(self) -> str:
        """The metrics table under the suite's line, upper bounds marked, and the checks' states."""
        from ..reporting.robust import robust_summary
        return robust_summary(self)

    def plot(self, directory) -> list:
        """Metrics against eps, the worst attack's adversarial examples and the convergence curves, as PNGs."""
        from ..reporting.robust import robust_plots
        return robust_plots(self, directory)

    def save(self, path) -> None:
        """The JSON form and what was evaluated (``about``), written atomically."""
        from ..files import write_json
        write_json(path, {**self.to_dict(), **self.about})


#: why a smoothed R@1 near 1 can stand beside a certified R@1 near 0 (printed by the CLI and the report)
SMOOTHED_VS_CERTIFIED = (
    "smoothed R@1 is the Recall@1 of the smoothed embeddings of clean images, with no adversary; certified R@1 at "
    "radius r counts an image only where its correct answer provably survives every perturbation within r, i.e. "
    "where the smoothed embedding's output ball R(r) fits inside the answer's margin. At r = 0 that ball is the "
    "smoothing's own spread, so certified R@1 can be far below smoothed R@1")


@dataclass
class CertifyResult:
    sigma: float
    radii: list[float]
    settings: dict
    images: int
    abstained: int
    clean: dict                       # the smoothed model's clean metrics (non-abstaining images clustered with the rest)
    certified_assignment: list[float]  # fraction of images whose assignment is certified, per radius
    certified_recall_at_1: list[float]  # fraction whose R@1 answer is correct and certified, per radius
    # per image: its certified radii (-1 = abstained), its assignment and label, the output ball R at
    # each radius (None = abstained) and the two margins the ball must stay inside
    per_image: dict = field(default_factory=dict)
    seconds_per_image: float = 0.0
    centroids: list = field(default_factory=list)  # the clustering whose assignments are certified
    embeddings: np.ndarray | None = field(default=None, repr=False)  # smoothed query embeddings (not saved)
    gallery: tuple | None = field(default=None, repr=False)  # (embeddings, labels, self_index) of the retrieval
    about: dict = field(default_factory=dict)  # what was certified (dataset, queries, model), saved beside

    def to_dict(self) -> dict:
        out = {"schema": schema("certify"), **asdict(self)}
        for kept_out in ("embeddings", "gallery", "about"):
            out.pop(kept_out)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "CertifyResult":
        own = {f.name for f in fields(cls)} - {"embeddings", "gallery", "about"}
        return cls(**{k: v for k, v in data.items() if k in own},
                   about={k: v for k, v in data.items() if k not in own | {"schema"}})

    def table(self) -> str:
        """The fraction certified at each radius, under the abstain rate and the smoothed clean figures."""
        lines = [f"sigma {self.sigma:g}: {self.images} images, abstain rate {self.abstained / max(self.images, 1):.3f} "
                 f"({self.abstained} of {self.images}); smoothed clean NMI {self.clean['nmi']:.3f}, R@1 "
                 f"{self.clean['recall@1']:.3f}; {self.seconds_per_image:.2f} s per image",
                 f"({SMOOTHED_VS_CERTIFIED}.)", "radius (L2)   certified assignment   certified R@1"]
        lines += [f"{r:11.4g}   {a:20.3f}   {k:13.3f}"
                  for r, a, k in zip(self.radii, self.certified_assignment, self.certified_recall_at_1)]
        return "\n".join(lines)

    def save(self, path) -> None:
        from ..files import write_json
        write_json(path, {**self.to_dict(), **self.about})
