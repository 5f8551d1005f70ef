"""Results files read back as the objects that wrote them: ``robustdml.load_result(path)`` gives the
:class:`RobustResult`, :class:`RankingResult` or certificates of a JSON file written by ``attack``,
``certify``, ``robustdml.evaluate`` and the others, to print, plot or compare again.

Every file names its kind and schema version (``"schema": {"kind": "robust", "version": 1}``);
files written before the schema was recorded read as version 0 (the same fields). A file of a later
version than this robustdml reads is a one-line error naming both.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelFileError

SCHEMAS = {"robust": 1, "ranking": 1, "certify": 1}


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


def from_dict(data: dict):
    """The result object of a result's JSON form."""
    from .certify import CertifyResult
    from .ranking import RankingResult
    from .robust import RobustResult

    kind, version = kind_of(data)
    if version > SCHEMAS[kind]:
        raise ModelFileError(f"a {kind} result of schema version {version}, written by a later robustdml; this one "
                             f"reads up to version {SCHEMAS[kind]}: upgrade robustdml")
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
