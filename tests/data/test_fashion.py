"""Fashion-MNIST readers on tiny IDX files built here (the real files are never needed), the pair
sampler, the ptriplet loss and the C2F2 network."""

import gzip

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustdml.data import PairBatchSampler, dataset_info, evaluation_sets, get_dataset
from robustdml.data import fashion
from robustdml.errors import ConfigError, DatasetError
from robustdml.losses import create_loss
from robustdml.models import create_model

from fixtures import make_fashion, write_idx


def test_robrank_protocol_all_classes_official_split(tmp_path):
    root = make_fashion(tmp_path / "f")
    info = dataset_info("fashion", root)
    assert info["train"] == {"images": 60, "classes": 10, "label_min": 0, "label_max": 9}
    assert info["test"] == {"images": 30, "classes": 10, "label_min": 0, "label_max": 9}
    query, gallery = evaluation_sets("fashion", root)
    assert gallery is None  # leave-one-out within the test set
    image, label = query[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert image[0, 0, 0] == 1.0 and image[0, 1, 1] == pytest.approx((10 * label + 0) / 255, abs=10 / 255)


def test_zero_shot_protocol_and_uncompressed_torchvision_layout(tmp_path):
    root = make_fashion(tmp_path / "tv" / "FashionMNIST" / "raw", compress=False).parents[1]
    info = dataset_info("fashion-zs", root)
    assert (info["train"]["label_min"], info["train"]["label_max"]) == (0, 4)
    assert (info["test"]["label_min"], info["test"]["label_max"]) == (5, 9)
    assert info["train"]["images"] == 30 and info["test"]["images"] == 15
    assert set(get_dataset("fashion-zs", "test", root).labels.tolist()) == {0, 1, 2, 3, 4}  # contiguous


def test_missing_files_say_both_ways_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion, "DEFAULT_ROOT", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="dataset-fashion-mnist.*--root"):
        get_dataset("fashion", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="missing train-images-idx3-ubyte"):
        get_dataset("fashion", "train", tmp_path / "empty")


def test_corrupt_files_are_one_line_errors(tmp_path):
    root = make_fashion(tmp_path / "c")
    path = root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])  # truncated gzip
    fashion._read_split.cache_clear()
    with pytest.raises(DatasetError, match="t10k-images"):
        get_dataset("fashion", "test", root)
    write_idx(path, np.zeros((5, 28, 28)))  # 5 images, 3 per class x 10 labels
    fashion._read_split.cache_clear()
    with pytest.raises(DatasetError, match="do not match"):
        get_dataset("fashion", "test", root)
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + b"\x00" * 20))  # floats: not ours
    fashion._read_split.cache_clear()
    with pytest.raises(DatasetError, match="magic"):
        get_dataset("fashion", "test", root)


def test_pair_sampler_lays_out_anchor_positive_pairs():
    labels = np.repeat(np.arange(5), 8)
    sampler = PairBatchSampler(labels, batch_size=10, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 40 // 5
    anchors = []
    for batch in batches:
        assert len(batch) == 10
        for a, p in zip(batch[0::2], batch[1::2]):
            assert a != p and labels[a] == labels[p]
            anchors.append(a)
    assert sorted(anchors) == list(range(40))  # every image is an anchor once per epoch
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches
    with pytest.raises(ConfigError, match="even"):
        PairBatchSampler(labels, batch_size=9)
    with pytest.raises(ConfigError, match="at least 2 images"):
        PairBatchSampler(np.array([0, 0, 1]), batch_size=2)


def test_ptriplet_loss_is_robranks_triplet():
    loss = create_loss("ptriplet", num_classes=3, embedding_dim=8)
    embeddings = torch.randn(8, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0])
    torch.manual_seed(5)
    value = loss(embeddings, labels)
    torch.manual_seed(5)
    anchors = torch.arange(0, 8, 2)
    other = (labels[anchors, None] != labels[None, :]).float()
    negatives = torch.multinomial(other, 1).squeeze(1)
    unit = F.normalize(embeddings)
    expected = F.triplet_margin_loss(unit[anchors], unit[anchors + 1], unit[negatives], margin=0.2)
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)
    assert (labels[negatives] != labels[anchors]).all()
    with pytest.raises(ConfigError, match="sampler: pairs"):
        loss(embeddings, torch.tensor([0, 1, 1, 1, 2, 2, 0, 0]))


def test_c2f2_is_robranks_network():
    model = create_model("c2f2", embedding_dim=512, in_channels=1, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == 3_789_184  # RobRank's ~3.8 M
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 512) and torch.allclose(out.norm(dim=1), torch.ones(3))
    # the embedding layer keeps PyTorch's default init, as RobRank's (our other heads: Kaiming, zero bias)
    bound = 1 / 1024 ** 0.5
    assert model.embedding.bias.abs().max() > 0 and model.embedding.weight.abs().max() <= bound
    assert create_model("small-cnn", embedding_dim=8, in_channels=1).embedding.bias.abs().max() == 0
    with pytest.raises(ConfigError, match="no pretrained"):
        create_model("c2f2", pretrained=True, in_channels=1)


def _robranks_order(model):
    """The same parameters in RobRank's layer order: conv, ReLU, max-pool, conv, ReLU, max-pool, FC, ReLU."""
    conv1, pool1, _, conv2, pool2, _, _, flatten, fc, _ = model.backbone
    body = torch.nn.Sequential(conv1, torch.nn.ReLU(), pool1, conv2, torch.nn.ReLU(), pool2, flatten, fc, torch.nn.ReLU())
    return lambda x: F.normalize(model.embedding(body(x)), dim=1)


def test_c2f2_matches_robranks_layer_order_bit_for_bit():
    # ours pools before ReLU (faster); embeddings, input gradients and weight gradients must not move
    # by one bit, also where max-pool windows tie (blank background, negative and positive biases)
    torch.manual_seed(0)
    model = create_model("c2f2", embedding_dim=32, in_channels=1, pretrained=False)
    with torch.no_grad():
        model.backbone[0].bias[:16] = -model.backbone[0].bias[:16].abs()
        model.backbone[0].bias[16:] = model.backbone[0].bias[16:].abs()
    theirs = _robranks_order(model)
    x = torch.rand(6, 1, 28, 28)
    x[:, :, :10] = 0  # a blank band: every window there ties at the bias

    def gradients(net):
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        e = net(xi)
        (e[0::2] * e[1::2]).sum().backward()
        return [xi.grad] + [p.grad.clone() for p in model.parameters()]

    assert torch.equal(model(x), theirs(x))
    for ours, robranks in zip(gradients(model), gradients(theirs)):
        assert torch.equal(ours, robranks)
    assert all(g.abs().sum() > 0 for g in gradients(model))  # every gradient is compared, none is void


def test_c2f2_keeps_its_weight_names_and_pools_other_sizes():
    model = create_model("c2f2", embedding_dim=8, in_channels=1, pretrained=False)
    # the names every saved c2f2 model uses (so files written before the layer reordering still load)
    assert [k for k in model.state_dict() if k.startswith("backbone.")] == [
        "backbone.0.weight", "backbone.0.bias", "backbone.3.weight", "backbone.3.bias",
        "backbone.8.weight", "backbone.8.bias"]
    x = torch.rand(2, 1, 36, 36)  # a 9x9 map after two poolings, average-pooled to 7x7
    features = model.backbone(x)
    assert features.shape == (2, 1024)
    nine = model.backbone[:6](x)
    assert nine.shape[-2:] == (9, 9)
    expected = model.backbone[7:](F.adaptive_avg_pool2d(nine, 7))
    assert torch.allclose(features, expected)
