"""robustdml: adversarially robust deep metric learning.

Train embedding networks (Proxy Anchor loss by default), attack them, defend them with Ensemble
Adversarial Training (Ke, "Towards Adversarially Robust Deep Metric Learning", arXiv 2501.01025),
and evaluate clustering-based inference and retrieval honestly — of any embedding model.

>>> import robustdml
>>> result = robustdml.evaluate(my_model, "digits", eps="0.1")   # any nn.Module: images -> embeddings
>>> print(result.table())
>>> robustdml.save_model(my_model, "models/mine", example_input=images[:2])
>>> model = robustdml.load_model("runs/digits")

The names below are imported on first use, so that ``import robustdml`` (and ``robustdml --help``)
does not pay for torch until something needs it.
"""

from importlib import import_module

from .errors import RobustDMLError, RobustDMLWarning

__version__ = "0.1.0"

_LAZY = {
    "evaluate": "api", "evaluate_ranking": "api", "certify": "api",
    "create_model": "models", "load_model": "models", "save_model": "models",
    "load_result": "evaluation.results", "AttackSuite": "evaluation.suite", "RobustResult": "evaluation.results",
    "EvaluationSession": "evaluation.session", "EvalSettings": "evaluation.session",
}
__all__ = ["RobustDMLError", "RobustDMLWarning", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'robustdml' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
