"""The learning-rate schedule factors, the optimiser's actual rates epoch by epoch, and the device resolver."""

import math

import pytest
import torch

from robustdml.engine import Trainer, config_from_dict
from robustdml.engine.devices import default_workers, resolve_device
from robustdml.engine.trainer import adamw, lr_factor
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


def test_the_trainers_adamw_is_the_fused_kernel_with_the_default_update(tmp_path):
    cfg = config_from_dict({"epochs": 1, "embedding_dim": 8, "batch_size": 64, "robust_eval": False})
    assert all(g["fused"] for g in Trainer(cfg, tmp_path / "run", progress=False).optimizer.param_groups)
    torch.manual_seed(0)
    start = [torch.randn(300, 7), torch.randn(5)]
    ours = [p.clone().requires_grad_(True) for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    fused = adamw([{"params": ours[:1], "lr": 1e-2}, {"params": ours[1:], "lr": 1e-1}], torch.device("cpu"),
                  lr=1e-2, weight_decay=1e-2)
    plain = torch.optim.AdamW([{"params": theirs[:1], "lr": 1e-2}, {"params": theirs[1:], "lr": 1e-1}],
                              lr=1e-2, weight_decay=1e-2)
    for step in range(5):
        grads = [torch.randn_like(p) for p in start]
        for params, optimizer in ((ours, fused), (theirs, plain)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b, s in zip(ours, theirs, start):
        assert (a - s).abs().max() > 1e-3  # they moved
        assert torch.allclose(a, b, rtol=0, atol=1e-6)  # by the same update


def test_device_resolver():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert default_workers(torch.device("cpu")) == 0
    with pytest.raises(ConfigError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
