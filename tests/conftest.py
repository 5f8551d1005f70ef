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
