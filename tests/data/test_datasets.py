import numpy as np
import pytest
import torch

from robustdml.data import ClassBalancedBatchSampler, dataset_info, evaluation_sets, get_dataset
from robustdml.errors import ConfigError, DatasetError


def test_digits_protocol():
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert set(train.class_ids.tolist()) == {0, 1, 2, 3, 4}
    assert set(test.class_ids.tolist()) == {5, 6, 7, 8, 9}
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert 0 <= float(train.images.min()) and float(train.images.max()) <= 1
    assert float(train.images.max()) == 1.0  # pixel / 16 reaches 1
    assert set(test.labels.tolist()) == {0, 1, 2, 3, 4}  # contiguous labels for losses


def test_readers_official_layouts(fixture_dataset):
    name, root = fixture_dataset
    info = dataset_info(name, root)
    splits = ("train", "query", "gallery") if name == "inshop" else ("train", "test")
    assert tuple(info) == splits
    for split in splits:
        ds = get_dataset(name, split, root, train=split == "train", image_size=16)
        assert info[split]["images"] == len(ds)
        assert info[split]["classes"] == len(np.unique(ds.class_ids))
        image, label = ds[0]
        assert image.shape == (3, 16, 16)  # grayscale / CMYK / RGBA all become RGB
        assert 0 <= image.min() and image.max() <= 1
        assert 0 <= label < ds.num_classes or name == "inshop"
    # train and test classes are disjoint (zero-shot protocol)
    test_split = "query" if name == "inshop" else "test"
    assert info["train"]["label_max"] < info[test_split]["label_min"]


def test_every_image_is_readable(fixture_dataset):
    name, root = fixture_dataset
    for split in ("train", "query", "gallery") if name == "inshop" else ("train", "test"):
        ds = get_dataset(name, split, root, image_size=16)
        for i in range(len(ds)):
            assert ds[i][0].shape == (3, 16, 16)


def test_inshop_query_and_gallery_share_labels(tmp_path):
    from fixtures import make_inshop
    root = make_inshop(tmp_path)
    query, gallery = evaluation_sets("inshop", root, image_size=16)
    for label, item in zip(query.labels, query.class_ids):
        assert set(gallery.class_ids[gallery.labels == label]) == {item}


def test_cub_class_halves(tmp_path):
    from fixtures import make_cub
    root = make_cub(tmp_path, classes=6, per_class=2)
    info = dataset_info("cub", root)
    assert (info["train"]["label_min"], info["train"]["label_max"]) == (1, 3)
    assert (info["test"]["label_min"], info["test"]["label_max"]) == (4, 6)


@pytest.mark.parametrize("name", ["cub", "cars", "sop", "inshop"])
def test_missing_root_names_expected_files(name, tmp_path):
    with pytest.raises(DatasetError, match="does not exist|needs --root"):
        get_dataset(name, "train", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="needs --root"):
        get_dataset(name, "train", None)


def test_missing_index_file(tmp_path):
    from fixtures import make_cub
    root = make_cub(tmp_path)
    (root / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetError, match="image_class_labels.txt"):
        get_dataset("cub", "train", root)


def test_missing_and_corrupt_images(tmp_path):
    from fixtures import make_sop
    root = make_sop(tmp_path)
    ds = get_dataset("sop", "train", root, image_size=16)
    ds.paths[0].unlink()
    with pytest.raises(DatasetError, match="missing"):
        ds[0]
    ds.paths[1].write_bytes(ds.paths[1].read_bytes()[:40])  # truncated JPEG
    with pytest.raises(DatasetError, match="cannot read image"):
        ds[1]


def test_class_balanced_sampler():
    labels = np.repeat(np.arange(10), 7)
    sampler = ClassBalancedBatchSampler(labels, batch_size=20, samples_per_class=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(labels) // 20
    for batch in batches:
        assert len(batch) == 20
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 5 and set(counts) == {4}
    sampler.set_epoch(0)
    assert list(sampler) == batches  # reproducible from seed and epoch
    sampler.set_epoch(1)
    assert list(sampler) != batches


@pytest.mark.parametrize("batch,m", [(20, 3), (200, 4)])
def test_class_balanced_sampler_rejects_impossible_batches(batch, m):
    with pytest.raises(ConfigError):
        ClassBalancedBatchSampler(np.repeat(np.arange(10), 7), batch_size=batch, samples_per_class=m)
