"""What produced a result: the hash of its resolved settings, the software and the code.

A benchmark cell stores, for each of its parts (training, attack suite, ranking, certificates), the
full resolved settings and their hash; a rerun compares hashes to decide what is still valid. The
software versions and the git commit are recorded beside them but not hashed: a new commit does not
make every result stale, it makes it traceable.
"""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..files import settings_hash

__all__ = ["git_commit", "settings_hash", "software_versions"]


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the robustdml checkout this code runs from (``+dirty`` with uncommitted
    changes), or None for an installed copy outside git."""
    here = Path(__file__).resolve().parents[2]
    if not (here / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def software_versions() -> dict:
    """The versions of robustdml, the libraries its figures depend on, the device, and the commit."""
    import faiss
    import pytorch_metric_learning
    import sklearn
    import torchvision

    from .. import __version__
    return {"robustdml": __version__, "commit": git_commit(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pytorch-metric-learning": pytorch_metric_learning.__version__, "faiss": faiss.__version__,
            "scikit-learn": sklearn.__version__, "numpy": np.__version__, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine() + " CPU"}
