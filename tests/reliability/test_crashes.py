"""Crashes during training and during checkpoint writes; numerical faults."""

import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from clirun import run_main

from robustdml.engine import config_from_dict, train
from robustdml.engine.checkpoint import load_checkpoint, save_checkpoint
from robustdml.engine.trainer import TrainingDiverged
from robustdml.errors import ConfigError
from robustdml.methods import METHODS, TrainingMethod, register_method

ARGS = ["epochs=3", "embedding_dim=16", "batch_size=64", "schedule=step", "lr_step=2", "robust_eval_size=64",
        "robust_eval_steps=1", "method=pgd-at", "method_kwargs.steps=2"]


def _cli(*args):
    return [sys.executable, "-m", "robustdml", "-q", "train", *args]


@pytest.mark.slow  # ~40 s; an in-process resume test stays in `make test` (tests/engine/test_train.py)
def test_kill_9_mid_training_then_resume_equals_uninterrupted(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen(_cli("--config", "configs/digits.yaml", "--out", str(killed), *ARGS),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # wait for the first checkpoint, then kill at a random moment of a later epoch
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.uniform(0.05, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = load_checkpoint(killed / "checkpoint.pt")["epoch"]
    assert 1 <= interrupted_at <= 3
    resumed = subprocess.run(_cli("--out", str(killed), "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    subprocess.run(_cli("--config", "configs/digits.yaml", "--out", str(whole), *ARGS), check=True,
                   capture_output=True)
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["criterion"]["proxies"], b["criterion"]["proxies"])
    assert len(a["history"]) == 3


def test_crash_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def crashing_save(obj, f, *a, **k):
        with open(f, "wb") as handle:
            handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk vanished mid-write")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


class _NaNAfter(TrainingMethod):
    name = "test-nan-after"

    def __init__(self, good_steps: int = 20):
        self.good_steps, self.calls = good_steps, 0

    def loss(self, model, criterion, images, labels, index):
        self.calls += 1
        loss = criterion(model(images), labels)
        return loss * float("nan") if self.calls > self.good_steps else loss


@pytest.fixture
def nan_method():
    register_method(_NaNAfter)
    yield
    METHODS.pop(_NaNAfter.name)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, nan_method):
    # 14 batches per epoch: epoch 1 is good, epoch 2 turns NaN at its 7th step
    cfg = config_from_dict({"epochs": 3, "embedding_dim": 16, "batch_size": 64, "method": "test-nan-after",
                            "robust_eval": False})
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(cfg, tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_loss_is_one_line_from_the_cli(tmp_path):
    proc = run_main("train", "--config", "configs/digits.yaml", "--out", str(tmp_path / "r"), "epochs=2",
                    "lr=1e25", "proxy_lr_mult=1", "robust_eval=false")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "loss became" in proc.stderr.strip().splitlines()[-1]


def test_negative_training_eps_is_rejected():
    with pytest.raises(ConfigError, match="eps"):
        from robustdml.methods import create_method
        create_method("pgd-at", eps=-0.1)
