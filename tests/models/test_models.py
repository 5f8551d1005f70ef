import json

import pytest
import torch
from safetensors.torch import save_file

import robustdml
from robustdml.errors import ConfigError, ModelFileError
from robustdml.models import BACKBONES, EnsembleNet, create_model, load_model, save_model
from robustdml.models.bninception import BNInception, load_bninception_weights


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbones_map_images_to_unit_embeddings(name):
    small = name == "small-cnn"
    model = create_model(name, embedding_dim=32, pretrained=False).eval()
    x = torch.rand(2, 1 if small else 3, 8 if small else 64, 8 if small else 64)
    emb = model(x)
    assert emb.shape == (2, 32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_normalisation_lives_in_the_model():
    model = create_model("resnet18", embedding_dim=8, pretrained=False)
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    bn = create_model("bn-inception", embedding_dim=8, pretrained=False)
    x = torch.rand(1, 3, 4, 4)
    # Caffe input space: BGR, [0, 255], minus the mean pixel
    expected = x.flip(1) * 255 - torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)
    assert torch.allclose(bn.normalize(x), expected, atol=1e-3)


def test_pretrained_weights_missing_from_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ConfigError, match="pretrained=false"):
        create_model("resnet18", pretrained=True)


def test_pretrained_weights_from_local_cache(tmp_path, monkeypatch):
    import torchvision
    reference = torchvision.models.resnet18(weights=None)
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = create_model("resnet18", pretrained=True, embedding_dim=8)
    assert torch.equal(model.backbone[0].weight, reference.conv1.weight)


def test_bn_inception_loads_caffe_weights_with_singleton_dims():
    source = BNInception()
    state = {k: (v.unsqueeze(0) if k.endswith("_bn.weight") else v) for k, v in source.state_dict().items()}
    target = BNInception()
    load_bninception_weights(target, state)
    assert torch.equal(target.conv1_7x7_s2.weight, source.conv1_7x7_s2.weight)
    assert torch.equal(target.inception_5b_pool_proj_bn.weight, source.inception_5b_pool_proj_bn.weight)


@pytest.mark.parametrize("ensemble", [False, True])
def test_save_load_roundtrip_gives_same_embeddings(tmp_path, ensemble):
    torch.manual_seed(0)
    model = create_model("small-cnn", embedding_dim=16)
    if ensemble:
        model = EnsembleNet([model, create_model("small-cnn", embedding_dim=16)])
    model.eval()
    save_model(model, tmp_path / "m")
    loaded = robustdml.load_model(tmp_path / "m")
    assert not loaded.training
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(model(x), loaded(x), atol=1e-6)
    assert torch.allclose(loaded(x), robustdml.load_model(tmp_path / "m" / "model.safetensors")(x))


def test_load_rejects_bad_files(tmp_path):
    model = create_model("small-cnn", embedding_dim=16)
    save_model(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "model.json").read_text())

    config["model"]["spec"]["surprise"] = 1
    (tmp_path / "m" / "model.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="unknown field"):
        load_model(tmp_path / "m")

    del config["model"]["spec"]["surprise"]
    config["model"]["spec"]["embedding_dim"] = 32
    (tmp_path / "m" / "model.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="does not match"):
        load_model(tmp_path / "m")

    config["model"]["spec"]["embedding_dim"] = 16
    (tmp_path / "m" / "model.json").write_text(json.dumps(config))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(tmp_path / "m")

    (tmp_path / "m" / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="JSON"):
        load_model(tmp_path / "m")

    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "absent")


def test_wrong_weight_shapes_are_named(tmp_path):
    model = create_model("small-cnn", embedding_dim=16)
    save_model(model, tmp_path / "m")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["embedding.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ModelFileError, match="embedding.weight"):
        load_model(tmp_path / "m")
