import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from fixtures import MAKERS  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(params=sorted(MAKERS))
def fixture_dataset(request, tmp_path):
    """(name, root) of a tiny dataset in its official layout."""
    return request.param, MAKERS[request.param](tmp_path)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The default digits config trained once per test session (standard Proxy Anchor). Without its
    robust validation, which leaves the trained model bit-identical (tests/evaluation/test_no_side_effects.py)
    and would take most of the time."""
    from robustdml.cli.config import load_train_config
    from robustdml.engine import train

    run = tmp_path_factory.mktemp("digits") / "run"
    result = train(load_train_config(REPO / "configs" / "digits.yaml", ["robust_eval=false"]), run, progress=False)
    return run, result
