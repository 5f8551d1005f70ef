import itertools

import pytest
import torch

from robustdml.data import get_dataset
from robustdml.engine import config_from_dict, train
from robustdml.errors import ConfigError
from robustdml.losses import create_loss
from robustdml.methods import METHODS, create_method
from robustdml.models import BACKBONES, create_model


def _grads(method, seed=0):
    torch.manual_seed(seed)
    model = create_model("small-cnn", embedding_dim=16).train()
    criterion = create_loss("proxy_anchor", num_classes=5, embedding_dim=16)
    ds = get_dataset("digits", "train")
    x, y = ds.images[:32], torch.as_tensor(ds.labels[:32])
    torch.manual_seed(seed + 1)
    loss = method.loss(model, criterion, x, y, torch.arange(32))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()] + [criterion.proxies.grad.clone()]


def _assert_same(a, b):
    assert torch.allclose(a[0], b[0], atol=1e-6)
    for ga, gb in zip(a[1], b[1]):
        assert torch.allclose(ga, gb, atol=1e-6)


@pytest.mark.parametrize("method", [
    create_method("trades", beta=0.0, eps=0.1),
    create_method("pgd-at", eps=0.0),
    create_method("pgd-at", eps=0.0, objective="loss"),
    create_method("mixup", lam=1.0),
])
def test_degenerate_settings_equal_standard(method):
    _assert_same(_grads(method), _grads(create_method("standard")))


@pytest.mark.parametrize("method", [create_method("trades", beta=6.0, eps=0.1), create_method("pgd-at", eps=0.1),
                                    create_method("mixup", lam=0.5)])
def test_active_settings_differ_from_standard(method):
    a, b = _grads(method), _grads(create_method("standard"))
    assert not torch.allclose(a[0], b[0])


def test_pgd_at_trains_on_adversarial_examples_within_eps():
    seen = []
    model = create_model("small-cnn", embedding_dim=16)
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    criterion = create_loss("proxy_anchor", num_classes=5, embedding_dim=16)
    x = get_dataset("digits", "train").images[:16]
    method = create_method("pgd-at", eps=0.1, steps=3)
    method.loss(model.train(), criterion, x, torch.zeros(16, dtype=torch.long), torch.arange(16))
    trained_on = seen[-1]
    assert not torch.equal(trained_on, x)
    assert (trained_on - x).abs().max() <= 0.1 + 1e-6
    assert model.training  # the attack restored the mode


@pytest.mark.parametrize("name,kwargs,match", [
    ("pgd-at", {"objective": "magic"}, "objective"),
    ("trades", {"beta": -1.0}, "beta"),
    ("mixup", {"alpha": 0.0}, "alpha"),
    ("pgd-at", {"epsilon": 0.1}, "takes no option"),
])
def test_bad_method_options(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_method(name, **kwargs)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_on_digits(method, tmp_path):
    cfg = config_from_dict({"epochs": 1, "embedding_dim": 16, "batch_size": 64, "method": method,
                            "method_kwargs": {"steps": 2} if method in ("pgd-at", "trades", "eat", "est", "act", "hm") else {},
                            "robust_eval_size": 64, "robust_eval_steps": 2, "select_metric": "robust_nmi"})
    result = train(cfg, tmp_path / method, progress=False)
    assert 0 <= result.clean["nmi"] <= 1 and "robust_nmi" in result.clean


def _fixture_step(method, dataset, backbone, tmp_path):
    from fixtures import MAKERS
    root = MAKERS[dataset](tmp_path / "data")
    cfg = config_from_dict({
        "dataset": dataset, "root": str(root), "backbone": backbone, "pretrained": False, "image_size": 32,
        "embedding_dim": 8, "epochs": 1, "batch_size": 4, "method": method, "robust_eval": False,
        "method_kwargs": {"steps": 1} if method in ("pgd-at", "trades", "eat", "est", "act", "hm") else {}})
    result = train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert set(result.clean) >= {"nmi", "f1", "ari", "recall@1", "map@r"}


FIXTURE_DATASETS = ["cub", "cars", "sop", "inshop"]
IMAGE_BACKBONES = sorted(b for b in BACKBONES if b != "small-cnn")


# every method on CUB and `standard` on every dataset in `make test` (the methods do not depend on
# the dataset); every other pair in the slow target
@pytest.mark.parametrize("method,dataset", [
    (m, d) if d == "cub" or m == "standard" else pytest.param(m, d, marks=pytest.mark.slow)
    for m, d in itertools.product(sorted(METHODS), FIXTURE_DATASETS)])
def test_one_step_on_every_fixture_dataset(method, dataset, tmp_path):
    backbone = IMAGE_BACKBONES[(sorted(METHODS).index(method) + FIXTURE_DATASETS.index(dataset)) % len(IMAGE_BACKBONES)]
    _fixture_step(method, dataset, backbone, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("method,dataset,backbone",
                         list(itertools.product(sorted(METHODS), FIXTURE_DATASETS, IMAGE_BACKBONES + ["small-cnn"])))
def test_one_step_every_method_dataset_backbone(method, dataset, backbone, tmp_path):
    _fixture_step(method, dataset, backbone, tmp_path)
