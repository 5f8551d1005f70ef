"""Two CPU processes under torchrun (gloo) train like one process with the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARGS = ["epochs=3", "embedding_dim=32", "batch_size=64", "robust_eval=false", "seed=0", "lr=0.001"]


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_two_processes_stay_in_sync_and_match_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "robustdml", "-q", "train",
                          "--config", "configs/digits.yaml", "--out", str(tmp_path / "two"), *ARGS, "check_sync=true"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]  # check_sync raises if the ranks ever differ
    one = subprocess.run([sys.executable, "-m", "robustdml", "-q", "train", "--config", "configs/digits.yaml",
                          "--out", str(tmp_path / "one"), *ARGS], capture_output=True, text=True, cwd=REPO, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())["clean"]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())["clean"]
    # Same global batches and a global-batch loss; BatchNorm statistics are per process, hence a tolerance.
    for key in ("nmi", "recall@1", "map@r"):
        assert abs(m2[key] - m1[key]) <= 0.05, (key, m1[key], m2[key])
