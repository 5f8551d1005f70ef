"""The learning-rate schedule factors, the optimiser's actual rates epoch by epoch, and the device resolver."""

import math

import pytest
import torch

from robustdml.engine import Trainer, config_from_dict
from robustdml.engine.devices import default_workers, resolve_device
from robustdml.engine.trainer import lr_factor
from robustdml.errors import ConfigError


@pytest.mark.parametrize("schedule,expected", [
    ("step", [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]),
    ("cosine", [0.5 * (1 + math.cos(math.pi * e / 10)) for e in range(10)]),
    ("none", [1.0] * 10),
])
def test_lr_factor(schedule, expected):
    cfg = config_from_dict({"epochs": 10, "schedule": schedule, "lr_step": 3, "lr_gamma": 0.5})
    assert [lr_factor(cfg, e) for e in range(10)] == pytest.approx(expected)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\(\)`")
def test_optimizer_follows_the_schedule_and_proxies_keep_their_multiplier(tmp_path):
    cfg = config_from_dict({"epochs": 4, "schedule": "step", "lr_step": 2, "lr_gamma": 0.1, "lr": 1e-3,
                            "proxy_lr_mult": 10.0, "embedding_dim": 8, "batch_size": 64, "robust_eval": False})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    rates = []
    for epoch in range(4):
        rates.append([g["lr"] for g in trainer.optimizer.param_groups])
        trainer.scheduler.step()
    assert [r[0] for r in rates] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert [r[-1] for r in rates] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])  # the proxies' group


def test_device_resolver():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert default_workers(torch.device("cpu")) == 0
    with pytest.raises(ConfigError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
