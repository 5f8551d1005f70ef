"""Two CPU processes under torchrun (gloo) train like one process with the same global batch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ARGS = ["epochs=3", "embedding_dim=32", "batch_size=64", "robust_eval=false", "seed=0", "lr=0.001"]


@pytest.mark.slow  # ~35 s; the sharded embedding test below keeps a two-process run in `make test`
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


@pytest.mark.slow  # ~60 s; kill -9 and resume in one process stays in `make test` (tests/reliability/test_crashes.py)
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_kill_9_under_torchrun_then_resume_equals_uninterrupted(tmp_path):
    """Two processes on an image dataset with random crops (each rank's random stream is its own),
    adversarial training (the attack runs the model in eval mode, so BatchNorm statistics matter):
    killed after its first checkpoint and resumed, the run ends with the same weights, proxies and
    BatchNorm statistics as an uninterrupted one."""
    from fixtures import make_cub

    from robustdml.engine.checkpoint import load_checkpoint

    root = make_cub(tmp_path / "data", classes=8, per_class=16)
    # images of different shapes, so random crops draw different amounts of randomness per rank
    for i, path in enumerate(sorted((root / "images").rglob("*.jpg"))):
        with Image.open(path) as image:
            image.convert("RGB").resize((20, 80) if i % 3 else (20, 20)).save(path)
    args = ["--config", "configs/digits.yaml", "dataset=cub", f"root={root}", "image_size=32", "epochs=5",
            "embedding_dim=16", "batch_size=8", "robust_eval=false", "schedule=step", "lr_step=2",
            "method=pgd-at", "method_kwargs.steps=2", "method_kwargs.eps=0.03"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
                "-m", "robustdml", "-q", "train"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen([*torchrun, "--out", str(killed), *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    # torchrun starts each worker in a session of its own: kill the workers and the launcher
    for pid in [*_children(proc.pid), proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    interrupted = load_checkpoint(killed / "checkpoint.pt")
    assert 1 <= interrupted["epoch"] < 5, interrupted["epoch"]
    # the ranks' random streams have parted ways by then, so each must get its own back
    assert not torch.equal(interrupted["rng_ranks"][0]["torch"], interrupted["rng_ranks"][1]["torch"])
    resumed = subprocess.run([*torchrun, "--out", str(killed), "--resume"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    subprocess.run([*torchrun, "--out", str(whole), *args], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=600)
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 5 and len(a["history"]) == 5
    for key in b["model"]:  # weights and BatchNorm running statistics
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["criterion"]["proxies"], b["criterion"]["proxies"])


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_an_embedding_shared_by_two_processes_equals_one_process_s_on_every_rank():
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(Path(__file__).parent / "sharded_embed_worker.py")],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(": ok") == 2


def test_finish_distributed_closes_the_group_and_is_a_no_op_without_one(tmp_path):
    import torch.distributed as dist

    from robustdml.engine.distributed import finish_distributed

    finish_distributed()  # a single process without a group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        finish_distributed()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
