"""Embedding models robustdml did not build, as a user brings them: evaluated with one import and one
call, on a dataset name or on tensors; saved with ``robustdml.save_model`` and attacked and certified
through the command line with the same figures; and the pre-flight checks' warnings and one-line
errors for models and files that cannot be evaluated as they are."""

import io
import json
import warnings
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustdml
from clirun import run_main

CHEAP = {"suite": ["centroid", "noise"], "steps": 2, "queries": 300}  # the calls are tested here, not the figures


class MLP(nn.Module):
    def __init__(self, normalize: bool = True):
        super().__init__()
        self.net, self.normalize = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)), normalize

    def forward(self, x):
        z = self.net(x)
        return F.normalize(z, dim=1) if self.normalize else z


class CNN(nn.Module):
    def __init__(self, channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, 16)

    def forward(self, x):
        return F.normalize(self.head(self.features(x)), dim=1)


def _model(cls, *args):
    torch.manual_seed(0)
    return cls(*args)


@pytest.fixture(scope="module")
def digits_tensors():
    from robustdml.data import get_dataset
    test = get_dataset("digits", "test")
    images = torch.stack([test[i][0] for i in range(len(test))])
    return images, torch.as_tensor(test.class_ids)


def test_one_call_on_a_dataset_name(tmp_path):
    model = _model(MLP)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = robustdml.evaluate(model, "digits", eps="0.1", suite="fast")
    assert result.settings["eps"] == [0.1] and result.about == {"dataset": "digits", "test_images": 896}
    assert result.worst["0.1"]["nmi"] < result.clean["nmi"] - 0.1  # an undefended random MLP is broken
    assert "L∞ 0.1" in result.table() and "fast" in result.table()
    plots = result.plot(tmp_path / "plots")
    assert all(p.is_file() for p in plots) and len(plots) >= 2
    result.save(tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["worst"] == result.worst and saved["dataset"] == "digits"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and model.training


def test_tensors_give_the_figures_of_the_dataset_name(digits_tensors):
    model = _model(CNN)
    by_name = robustdml.evaluate(model, "digits", eps=0.1, **CHEAP)
    by_tensors = robustdml.evaluate(model, digits_tensors, eps=0.1, **CHEAP)
    assert by_tensors.clean == by_name.clean and by_tensors.attacks == by_name.attacks
    assert by_tensors.about["dataset"] is None
    half = len(digits_tensors[0]) // 2  # and with a gallery of its own
    x, y = digits_tensors
    with_gallery = robustdml.evaluate(model, (x[:half], y[:half]), gallery=(x[half:], y[half:]), eps=0.1, **CHEAP)
    assert with_gallery.about["test_images"] == 300 and 0 <= with_gallery.worst["0.1"]["recall@1"] <= 1


@pytest.fixture(scope="module")
def saved_cnn(tmp_path_factory, digits_tensors):
    model = _model(CNN)
    directory = robustdml.save_model(model, tmp_path_factory.mktemp("own") / "cnn", example_input=digits_tensors[0][:2],
                                     dataset="digits")
    return model, directory


def test_saved_program_loads_without_pickle_and_embeds_the_same(saved_cnn, digits_tensors):
    model, directory = saved_cnn
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.pt2"]
    description = json.loads((directory / "model.json").read_text())
    assert description["model"]["input_shape"] == [1, 8, 8] and description["model"]["embedding_size"] == 16
    assert description["trained_on"] == {"dataset": "digits", "input_shape": [1, 8, 8]}
    loaded = robustdml.load_model(directory)
    x = digits_tensors[0][:37]  # another batch size than the example's
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6)


def test_cli_attack_on_the_saved_model_equals_the_python_call(saved_cnn, tmp_path):
    _, directory = saved_cnn
    python = robustdml.evaluate(robustdml.load_model(directory), "digits", eps="0.1", **CHEAP).to_dict()
    out = tmp_path / "attack"
    done = run_main("attack", str(directory), "--dataset", "digits", "--attack", "centroid", "noise", "--steps", "2",
                    "--queries", "300", "--eps", "0.1", "--out", str(out), "-q")
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("digits-custom-*.json")
    cli = json.loads(path.read_text())
    for key in ("clean", "attacks", "worst", "worst_attack", "checks"):
        assert cli[key] == python[key], key


def test_cli_attack_on_a_trained_run_equals_the_python_call(digits_run, tmp_path):
    """A model robustdml trained: `robustdml attack` on its run folder and `robustdml.evaluate` on the
    loaded model give the same figures, to the last digit."""
    run, _ = digits_run
    python = robustdml.evaluate(robustdml.load_model(run), "digits", eps="0.1", **CHEAP).to_dict()
    done = run_main("attack", str(run), "--dataset", "digits", "--attack", "centroid", "noise", "--steps", "2",
                    "--queries", "300", "--eps", "0.1", "--out", str(tmp_path), "--json", str(tmp_path / "a.json"), "-q")
    assert done.returncode == 0, done.stderr
    cli = json.loads((tmp_path / "a.json").read_text())
    for key in ("clean", "attacks", "worst", "worst_attack", "checks", "settings"):
        assert cli[key] == python[key], key


def test_cli_certify_on_the_saved_model_equals_the_python_call(saved_cnn, tmp_path):
    _, directory = saved_cnn
    options = {"sigma": 0.25, "samples": 200, "center_samples": 200, "alpha": 0.2, "delta": 0.2, "queries": 6,
               "radii": [0.0, 0.1]}
    python = robustdml.certify(robustdml.load_model(directory), "digits", **options).to_dict()
    done = run_main("certify", str(directory), "--dataset", "digits", "--sigma", "0.25", "--samples", "200",
                    "--center-samples", "200", "--alpha", "0.2", "--delta", "0.2", "--queries", "6", "--radii", "0", "0.1",
                    "--out", str(tmp_path), "-q")
    assert done.returncode == 0, done.stderr
    cli = json.loads((tmp_path / "digits-sigma0.25.json").read_text())
    for key in ("certified_assignment", "certified_recall_at_1", "abstained", "clean", "per_image"):
        assert cli[key] == python[key], key


def test_saved_model_refuses_other_data(saved_cnn, tmp_path):
    model, _ = saved_cnn
    directory = robustdml.save_model(model, tmp_path / "for-fashion", example_input=torch.rand(2, 1, 8, 8),
                                     dataset="fashion")
    done = run_main("evaluate", str(directory), "--dataset", "digits", "-q")
    assert done.returncode == 2 and "trained on fashion" in done.stderr and "--dataset-mismatch-ok" in done.stderr


# --- pre-flight checks --------------------------------------------------------------------------------
def test_a_model_for_other_images_is_a_one_line_error():
    with pytest.raises(robustdml.RobustDMLError, match=r"cannot embed the data's images \(batches of 1x8x8"):
        robustdml.evaluate(_model(CNN, 3), "digits", eps=0.1, **CHEAP)


def test_not_a_module_is_a_one_line_error():
    with pytest.raises(robustdml.RobustDMLError, match="must be a torch.nn.Module"):
        robustdml.evaluate(lambda x: x.flatten(1), "digits", eps=0.1, **CHEAP)


def test_embeddings_not_unit_norm_warn_and_normalize_silences(digits_tensors):
    x, y = digits_tensors[0][:60], digits_tensors[1][:60]
    with pytest.warns(robustdml.RobustDMLWarning, match="not unit norm"):
        robustdml.evaluate(_model(MLP, False), (x, y), eps=0.1, **CHEAP)
    with warnings.catch_warnings():
        warnings.simplefilter("error", robustdml.RobustDMLWarning)
        robustdml.evaluate(_model(MLP, False), (x, y), eps=0.1, normalize=True, **CHEAP)


class _Random(MLP):
    def forward(self, x):
        return F.normalize(F.dropout(self.net(x), 0.5, training=True), dim=1)


class _Detached(MLP):
    def forward(self, x):
        return super().forward(x.detach())


@pytest.mark.parametrize("cls, warning", [(_Random, "random at test time"), (_Detached, "no gradient reaches the input")])
def test_doubtful_models_warn(digits_tensors, cls, warning):
    x, y = digits_tensors[0][:60], digits_tensors[1][:60]
    with pytest.warns(robustdml.RobustDMLWarning, match=warning):
        robustdml.evaluate(_model(cls), (x, y), eps=0.1, **CHEAP)


@pytest.mark.parametrize("data, message", [
    ((torch.rand(10, 1, 8, 8) * 255, torch.zeros(10, dtype=torch.long)), r"must be in \[0, 1\]"),
    ((torch.rand(10, 1, 8, 8), torch.zeros(9, dtype=torch.long)), "labels must be 10 integers"),
    ((torch.rand(10, 64), torch.zeros(10, dtype=torch.long)), r"float tensor \(N, C, H, W\)"),
    ([1, 2, 3], "a pair"),
    (3.5, "a dataset name"),
])
def test_bad_data_is_a_one_line_error(data, message):
    with pytest.raises(robustdml.RobustDMLError, match=message):
        robustdml.evaluate(_model(MLP), data, eps=0.1, **CHEAP)


def test_tensors_without_a_budget_say_what_to_give():
    with pytest.raises(robustdml.RobustDMLError, match="eps is needed"):
        robustdml.evaluate(_model(MLP), (torch.rand(10, 1, 8, 8), torch.arange(10) % 2), **CHEAP)


def test_save_model_of_a_foreign_module_needs_an_example(tmp_path):
    with pytest.raises(robustdml.RobustDMLError, match="needs example_input"):
        robustdml.save_model(_model(MLP), tmp_path / "m")


def _tampered(directory, into, change):
    """A copy of the saved model in ``into`` whose program archive is rewritten with
    ``change(name, data) -> data``."""
    into.mkdir()
    for name in ("model.json", "model.pt2"):
        (into / name).write_bytes((directory / name).read_bytes())
    with zipfile.ZipFile(into / "model.pt2") as z:
        items = [(n, change(n, z.read(n))) for n in z.namelist()]
    with zipfile.ZipFile(into / "model.pt2", "w") as z:
        for name, data in items:
            z.writestr(name, data)
    return into


def test_a_pickle_in_place_of_the_program_is_refused(saved_cnn, tmp_path):
    _, directory = saved_cnn
    copy = tmp_path / "pickled"
    copy.mkdir()
    (copy / "model.json").write_text((directory / "model.json").read_text())
    torch.save(_model(CNN), copy / "model.pt2")  # a pickled module where the program belongs
    with pytest.raises(robustdml.RobustDMLError, match="not an exported program archive"):
        robustdml.load_model(copy)
    done = run_main("evaluate", str(copy), "--dataset", "digits", "-q")
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def _pickled_weights(name, data):
    if name.endswith("_weights_config.json"):
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config)
    return data


def _pickled_inputs(name, data):
    if "/sample_inputs/" in name:
        buffer = io.BytesIO()
        torch.save({"x": _Detached}, buffer)  # a class: only a full unpickler would read it
        return buffer.getvalue()
    return data


@pytest.mark.parametrize("change, message", [(_pickled_weights, "holds pickled objects"),
                                             (_pickled_inputs, "sample inputs are not plain tensors")])
def test_a_program_carrying_pickled_objects_is_refused(saved_cnn, tmp_path, change, message):
    _, directory = saved_cnn
    with pytest.raises(robustdml.RobustDMLError, match=message):
        robustdml.load_model(_tampered(directory, tmp_path / "tampered", change))


def test_a_benchmark_cell_of_the_saved_model_equals_the_python_call(saved_cnn, tmp_path):
    import yaml
    _, directory = saved_cnn
    config = tmp_path / "own.yaml"
    config.write_text(yaml.safe_dump({
        "name": "own", "grid": {"dataset": ["digits"], "seed": [0]}, "models": {"mine": str(directory)},
        "attack": {"attacks": ["centroid", "noise"], "steps": 2, "eps": [0.1]}, "attack_queries": 300,
        "surrogate": False, "train": {"eval_batch_size": 256, "kmeans_restarts": 5}}))
    done = run_main("benchmark", "--config", str(config), "--out", str(tmp_path / "out"), "-q")
    assert done.returncode == 0, done.stderr
    cell = json.loads((tmp_path / "out" / "cells" / "digits-saved-mine-s0" / "result.json").read_text())
    assert cell["status"] == "ok" and cell["config"]["model"] == str(directory)
    python = robustdml.evaluate(robustdml.load_model(directory), "digits", eps=0.1, batch_size=256, kmeans_restarts=5,
                                **CHEAP).to_dict()
    for key in ("clean", "attacks", "worst", "worst_attack", "checks"):
        assert cell[key] == python[key], key
    assert "mine" in (tmp_path / "out" / "report.md").read_text()
