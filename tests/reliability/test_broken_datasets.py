"""Broken datasets: each gets a clear error naming what is wrong, or a documented handling."""

import json

import numpy as np
import pytest
import torch
from clirun import run_cli, run_main

from robustdml.data import evaluation_sets, get_dataset
from robustdml.errors import DatasetError
from robustdml.evaluation import evaluate_embeddings


@pytest.mark.parametrize("name", ["cub", "cars", "sop", "inshop"])
def test_missing_root_is_one_line_from_the_cli(name, tmp_path):
    # in this process: tests/cli/test_cli.py runs a one-line error through the real executable
    proc = run_main("data", "info", "--dataset", name, "--root", str(tmp_path / "absent"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name,index", [("cub", "images.txt"), ("cars", "cars_annos.mat"), ("sop", "Ebay_test.txt"),
                                        ("inshop", "Eval/list_eval_partition.txt")])
def test_missing_index_file_is_named(name, index, tmp_path):
    from fixtures import MAKERS
    root = MAKERS[name](tmp_path)
    (root / index).unlink()
    with pytest.raises(DatasetError, match=index.split("/")[-1]):
        get_dataset(name, "train", root)


def test_malformed_index_line(tmp_path):
    from fixtures import make_cub
    root = make_cub(tmp_path)
    with open(root / "images.txt", "a") as f:
        f.write("99\n")
    with pytest.raises(DatasetError, match=r"images.txt:\d+: expected 2 fields"):
        get_dataset("cub", "train", root)


def test_corrupt_mat_file(tmp_path):
    from fixtures import make_cars
    root = make_cars(tmp_path)
    (root / "cars_annos.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DatasetError, match="cars_annos.mat"):
        get_dataset("cars", "train", root)


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.unlink(), "missing"),
    (lambda p: p.write_bytes(p.read_bytes()[:60]), "cannot read image"),
    (lambda p: p.write_bytes(b""), "cannot read image"),
])
def test_missing_truncated_and_zero_byte_images(tmp_path, damage, match):
    from fixtures import make_sop
    root = make_sop(tmp_path)
    ds = get_dataset("sop", "test", root, image_size=16)
    damage(ds.paths[0])
    with pytest.raises(DatasetError, match=match):
        ds[0]


def test_damaged_image_stops_evaluation_with_one_line(tmp_path):
    from fixtures import make_sop
    root = make_sop(tmp_path)
    ds = get_dataset("sop", "test", root)
    ds.paths[1].write_bytes(b"")
    model_dir = tmp_path / "model"
    from robustdml.models import create_model, save_model
    save_model(create_model("small-cnn", in_channels=3, embedding_dim=8), model_dir)
    proc = run_cli("evaluate", str(model_dir), "--dataset", "sop", "--root", str(root), "--image-size", "16")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(ds.paths[1]) in proc.stderr


def test_grayscale_cmyk_and_alpha_images_become_rgb(tmp_path):
    from fixtures import make_cars, make_cub, make_inshop
    cub = get_dataset("cub", "train", make_cub(tmp_path), image_size=16)       # image 1 is grayscale (L)
    cars = get_dataset("cars", "train", make_cars(tmp_path), image_size=16)    # image 2 is CMYK
    query, gallery = evaluation_sets("inshop", make_inshop(tmp_path), image_size=16)  # one PNG with alpha
    from PIL import Image
    assert Image.open(cub.paths[0]).mode == "L" and Image.open(cars.paths[1]).mode == "CMYK"
    assert any(Image.open(p).mode == "RGBA" for p in gallery.paths + query.paths + get_dataset(
        "inshop", "train", tmp_path / "inshop", image_size=16).paths)
    for ds in (cub, cars, gallery):
        for i in range(len(ds)):
            assert ds[i][0].shape == (3, 16, 16)


def test_class_with_one_image_is_skipped_as_a_query_only():
    # documented handling: a query with no other image of its class has no correct answer, so
    # retrieval metrics leave it out (as pytorch-metric-learning does); clustering keeps it.
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9], [-1.0, 0]]), dim=1)
    labels = np.array([0, 0, 1, 1, 2])  # class 2 has a single image
    result = evaluate_embeddings(emb, labels, ks=(1,))
    assert result["recall@1"] == 1.0 and result["map@r"] == 1.0
    assert 0 <= result["nmi"] <= 1


def test_data_info_reports_a_working_fixture(tmp_path):
    from fixtures import make_cub
    proc = run_main("data", "info", "--dataset", "cub", "--root", str(make_cub(tmp_path)))
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["test"]["classes"] == 2
