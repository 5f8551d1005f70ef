"""timm backbones: tiny random-init models (timm's own test_vit and test_resnet) train, save, reload,
pass the attack invariants, load weight files, and never reach for the network."""

import itertools
import socket

import pytest
import torch

from robustdml.attacks import ATTACKS, Norm
from robustdml.errors import ConfigError, ModelFileError
from robustdml.methods import METHODS
from robustdml.models import create_model, load_model, save_model
from robustdml.models.backbones import TimmFeatures

TIMM = ["timm/test_vit", "timm/test_resnet"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a timm backbone tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("name", TIMM)
def test_save_and_reload_give_identical_embeddings(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, embedding_dim=8, in_channels=3).eval()
    x = torch.rand(4, 3, 32, 32)
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert torch.equal(again(x), model(x))
    assert again.spec.backbone == name and again.spec.mean == model.spec.mean == [0.5, 0.5, 0.5]


def test_transformer_uses_its_cls_feature_and_cnn_its_pooled_map():
    torch.manual_seed(0)
    vit = create_model("timm/test_vit", embedding_dim=8).eval()
    x = torch.rand(2, 3, 32, 32)
    tokens = vit.backbone.net.forward_features(vit.normalize(x))
    assert torch.allclose(vit.features(x), vit.backbone.net.forward_head(tokens, pre_logits=True))
    assert vit.backbone.net.global_pool == "token"  # the CLS token
    cnn = create_model("timm/test_resnet", embedding_dim=8).eval()
    fmap = cnn.backbone.net.forward_features(cnn.normalize(torch.rand(2, 3, 64, 64)))
    assert fmap.dim() == 4  # a map, pooled by GAP + GMP
    torch.manual_seed(1)
    y = torch.rand(2, 3, 64, 64)
    fmap = cnn.backbone.net.forward_features(cnn.normalize(y))
    assert torch.allclose(cnn.features(y), fmap.mean((2, 3)) + fmap.amax((2, 3)))


@pytest.mark.parametrize("name", TIMM)
def test_weight_file_is_loaded(name, tmp_path):
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(123)
    source = timm.create_model(name.removeprefix("timm/"), pretrained=False)  # with its classifier
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    torch.manual_seed(0)
    fresh = create_model(name, embedding_dim=8)
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        torch.manual_seed(0)
        loaded = create_model(name, embedding_dim=8, pretrained=str(path))
        for key, value in loaded.backbone.net.state_dict().items():
            assert torch.equal(value, state[key]), key
        differs = [k for k, v in fresh.backbone.net.state_dict().items() if v.is_floating_point() and not torch.equal(v, state[k])]
        assert differs  # the file's values, not the random initialisation
        x = torch.rand(2, 3, 32, 32)
        assert not torch.allclose(loaded.eval().features(x), fresh.eval().features(x))
        assert torch.allclose(loaded.features(x), TimmFeatures(source.eval())(loaded.normalize(x)), atol=1e-5)
    del state[next(iter(state))]
    save_file(state, str(tmp_path / "short.safetensors"))
    with pytest.raises(ModelFileError, match="does not fit"):
        create_model(name, embedding_dim=8, pretrained=str(tmp_path / "short.safetensors"))


def test_missing_pretrained_weights_are_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="not on this machine.*pretrained=PATH"):
        create_model("timm/test_vit", embedding_dim=8, pretrained=True)


def test_unknown_timm_model_is_a_config_error():
    from robustdml.engine import config_from_dict
    with pytest.raises(ConfigError, match="backbone must be one of"):
        config_from_dict({"backbone": "timm/no_such_model_xyz"}).validate()
    with pytest.raises(ConfigError, match="timm has no model"):
        create_model("timm/no_such_model_xyz")


torch.manual_seed(0)
MODELS = {name: create_model(name, embedding_dim=8) for name in TIMM}
SURROGATES = {name: create_model(name, embedding_dim=8).eval() for name in TIMM}


@pytest.mark.parametrize("name", TIMM)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attack_invariants_on_timm_models(name, attack, mode):
    """Within the ball and [0, 1], the caller's images untouched, the model's mode restored."""
    from robustdml.attacks import AttackContext, create_attack
    from robustdml.attacks.base import CleanPool
    model = MODELS[name].train(mode == "train")
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 3
    original = x.clone()
    with torch.no_grad():
        emb = model.eval()(x)
    model.train(mode == "train")
    centroids = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    clusters = (emb @ centroids.T).argmax(1)
    eps = 0.05
    attack = create_attack(attack, eps, steps=2, norm=Norm.LINF)
    context = AttackContext(centroids=centroids, assignments=clusters, gallery=emb, gallery_labels=y, labels=y,
                            self_index=torch.arange(6), surrogate=SURROGATES[name],
                            targets=attack.plan(CleanPool(emb, y, clusters, centroids, emb, y)))
    x_adv = attack(model, x, context)
    assert model.training == (mode == "train")
    assert torch.equal(x, original) and x_adv.shape == x.shape
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= eps + 1e-6


FIXTURES = ["cub", "cars", "sop", "inshop"]


def _one_step(name, method, dataset, tmp_path):
    from fixtures import MAKERS

    from robustdml.engine import config_from_dict, train
    root = MAKERS[dataset](tmp_path / "data")
    cfg = config_from_dict({
        "dataset": dataset, "root": str(root), "backbone": name, "pretrained": False, "image_size": 32,
        "embedding_dim": 8, "epochs": 1, "batch_size": 4, "method": method, "robust_eval": False,
        "method_kwargs": {"steps": 1} if method not in ("standard", "mixup") else {}})
    result = train(cfg, tmp_path / "run", progress=False)
    assert set(result.clean) >= {"nmi", "recall@1"}
    x = torch.rand(2, 3, 32, 32)
    assert load_model(tmp_path / "run" / "last")(x).shape == (2, 8)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_step_every_method(method, tmp_path):
    """Every method on both models, on the datasets in turn (the whole grid: the slow test below)."""
    i = sorted(METHODS).index(method)
    _one_step(TIMM[i % 2], method, FIXTURES[i % len(FIXTURES)], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name,method,dataset", list(itertools.product(TIMM, sorted(METHODS), FIXTURES)))
def test_one_step_every_model_method_and_fixture_dataset(name, method, dataset, tmp_path):
    _one_step(name, method, dataset, tmp_path)


def test_backbone_learning_rate_split(tmp_path):
    from robustdml.engine import Trainer, config_from_dict
    cfg = config_from_dict({"backbone": "timm/test_resnet", "epochs": 1, "embedding_dim": 8, "lr": 0.001,
                            "backbone_lr_mult": 0.1, "robust_eval": False})
    trainer = Trainer(cfg.validate(), tmp_path / "run", progress=False)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs[0] == pytest.approx(0.0001) and lrs[1] == pytest.approx(0.001)  # backbone, then the embedding head
