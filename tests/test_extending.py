"""docs/extending.md, tested: a toy attack, training method, dataset and metric, each one file in
tests/extensions/ that registers itself, run end to end through the command-line code path
(train, --resume, evaluate, attack with an attack option, benchmark and report) with no edit to
the package."""

import importlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from robustdml.attacks import ATTACKS
from robustdml.cli.main import main
from robustdml.data import DATASETS
from robustdml.engine.checkpoint import load_checkpoint
from robustdml.evaluation import METRICS
from robustdml.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
TOYS = {"toy_attack": (ATTACKS, "toy-one-step"), "toy_method": (METHODS, "toy-noisy-gain"),
        "toy_dataset": (DATASETS, "toy-blobs"), "toy_metric": (METRICS, "purity"),
        "toy_retrieval_metric": (METRICS, "r-precision")}
TRAIN = ["dataset=toy-blobs", "method=toy-noisy-gain", "embedding_dim=16", "batch_size=32", "lr=0.001",
         "select_metric=purity", "robust_eval_size=64", "robust_eval_steps=2"]


@pytest.fixture(scope="module", autouse=True)
def toys():
    """Import the five files (which registers them) and unregister them afterwards, so the rest of
    the suite sees the package's own registries."""
    for module, (registry, name) in TOYS.items():
        loaded = importlib.import_module(f"extensions.{module}")
        if name not in registry:  # imported and unregistered by an earlier run in this process
            importlib.reload(loaded)
    yield
    for registry, name in TOYS.values():
        registry.pop(name, None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A toy-method model trained on the toy dataset through `robustdml train`: one epoch, then --resume to two."""
    out = tmp_path_factory.mktemp("toy") / "run"
    assert main(["train", "--config", str(REPO / "configs" / "digits.yaml"), "--out", str(out), "-q", "epochs=1", *TRAIN]) == 0
    first = load_checkpoint(out / "checkpoint.pt")["method"]
    assert main(["train", "--out", str(out), "--resume", "-q", "epochs=2"]) == 0
    return out, first


def test_train_and_resume_carry_the_methods_state_and_parameters(run):
    out, first = run
    assert first["epochs_started"] == 1
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["method"]["epochs_started"] == 2  # restored from the checkpoint, then one more epoch
    assert not torch.equal(state["method"]["gain"], torch.ones(()))  # its own optimiser group trained it
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 4  # backbone, head, proxies, and the method's own group
    assert groups[-1]["initial_lr"] == pytest.approx(2.0 * 0.001)  # at the method's lr_mult
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["clean"]["purity"] <= 1 and "robust_purity" in metrics["clean"]
    assert metrics["select_metric"] == "purity"


def test_evaluate_reports_the_new_metric(run, tmp_path, capsys):
    out, _ = run
    assert main(["evaluate", str(out), "--dataset", "toy-blobs", "--json", str(tmp_path / "e.json"), "-q"]) == 0
    clean = json.loads((tmp_path / "e.json").read_text())["clean"]
    assert set(clean) >= {"nmi", "f1", "ari", "purity", "recall@1", "recall@2", "map@r", "r-precision"}
    assert 0 < clean["r-precision"] <= 1
    assert "purity" in capsys.readouterr().out


def test_certify_reports_the_new_metrics(run, tmp_path):
    """A registered metric, clustering or retrieval, reaches the certificates' smoothed clean figures."""
    out, _ = run
    path = tmp_path / "c.json"
    assert main(["certify", str(out), "--dataset", "toy-blobs", "--sigma", "0.25", "--queries", "12", "--samples", "100",
                 "--center-samples", "100", "--alpha", "0.2", "--delta", "0.2", "--radii", "0", "--json", str(path),
                 "-q"]) == 0
    clean = json.loads(path.read_text())["clean"]
    assert 0 <= clean["purity"] <= 1 and 0 <= clean["r-precision"] <= 1


def test_attack_runs_the_new_attack_with_its_own_option(run, tmp_path):
    out, _ = run
    worst = {}
    for scale in (0.25, 1.0):
        path = tmp_path / f"a{scale}.json"
        assert main(["attack", str(out), "--dataset", "toy-blobs", "--attack", "toy-one-step", "noise", "--eps", "0.1",
                     "--attack-option", f"toy-one-step.scale={scale}", "--out", str(tmp_path / str(scale)),
                     "--json", str(path), "-q"]) == 0
        result = json.loads(path.read_text())
        assert set(result["attacks"]) == {"toy-one-step", "noise"}
        assert result["settings"]["attack_kwargs"] == {"toy-one-step": {"scale": scale}}
        assert "purity" in result["worst"]["0.1"] and "r-precision" in result["worst"]["0.1"]
        worst[scale] = result["attacks"]["toy-one-step"]["0.1"]
    assert worst[0.25] != worst[1.0]  # the option reached the attack


def test_an_option_the_attack_does_not_take_is_one_line(run, capsys):
    out, _ = run
    code = main(["attack", str(out), "--dataset", "toy-blobs", "--attack", "toy-one-step",
                 "--attack-option", "toy-one-step.bogus=1", "-q"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes no option(s) bogus" in err[0]


def test_benchmark_grid_and_report_with_every_extension(tmp_path, capsys):
    config = {"name": "toys", "base_config": str(REPO / "configs" / "digits.yaml"),
              "grid": {"dataset": ["toy-blobs"], "backbone": ["small-cnn"], "method": ["standard", "toy-noisy-gain"],
                       "seed": [0]},
              "train": {"epochs": 1, "embedding_dim": 16, "batch_size": 32, "robust_eval": False},
              "attack": {"eps": [0.05, 0.1], "attacks": ["toy-one-step", "noise"],
                         "attack_kwargs": {"toy-one-step": {"scale": 0.5}}},
              "surrogate": False}
    path = tmp_path / "toys.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["benchmark", "--config", str(path), "--out", str(tmp_path / "bench"), "-q"]) == 0
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "toy-noisy-gain" in report and "clean purity" in report and "adv purity" in report
    assert "clean r-precision" in report and "adv r-precision" in report
    cell = json.loads((tmp_path / "bench" / "cells" / "toy-blobs-small-cnn-toy-noisy-gain-s0" / "result.json").read_text())
    assert cell["status"] == "ok" and "toy-one-step" in cell["attacks"]
