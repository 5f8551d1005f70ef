"""robustdml: adversarially robust deep metric learning.

Train embedding networks (Proxy Anchor loss by default), attack them, defend them with Ensemble
Adversarial Training (Ke, "Towards Adversarially Robust Deep Metric Learning", arXiv 2501.01025),
and evaluate clustering-based inference and retrieval honestly.

>>> import robustdml
>>> model = robustdml.load_model("runs/digits")
"""

from .errors import RobustDMLError
from .models import create_model, load_model, save_model

__version__ = "0.1.0"
__all__ = ["RobustDMLError", "create_model", "load_model", "save_model", "__version__"]
