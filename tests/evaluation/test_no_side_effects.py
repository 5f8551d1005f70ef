"""Evaluation never changes the model it evaluates.

Every entry point is handed a model in train mode (BatchNorm layers that would update their running
statistics from every batch they see) and must give it back bit-identical and in the mode it came in;
training with robust validation must save the same weights as training without it.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Subset

from robustdml.attacks import ThreatModel
from robustdml.cli.config import load_train_config
from robustdml.data import evaluation_sets
from robustdml.engine import train
from robustdml.engine.checkpoint import load_checkpoint
from robustdml.evaluation import embed
from robustdml.evaluation.certify import Smoothing, certify, eot_attack
from robustdml.evaluation.ranking import evaluate_ranking
from robustdml.evaluation.robust import AttackSuite, evaluate_robustness
from robustdml.evaluation.suite import NAMED
from robustdml.models import EnsembleNet, create_model
from robustdml.models.modes import eval_mode

from conftest import REPO


def _net(seed: int, freeze_bn: bool = False):
    torch.manual_seed(seed)
    return create_model("small-cnn", embedding_dim=16, in_channels=1, freeze_bn=freeze_bn)


MODELS = {
    "batchnorm": lambda: _net(0),
    "ensemble": lambda: EnsembleNet([_net(1), _net(2)]),
    # mixed modes: the backbone's BatchNorm stays in eval mode while the rest trains
    "frozen-bn": lambda: _net(3, freeze_bn=True),
}


@pytest.fixture(scope="module")
def test_set():
    query, _ = evaluation_sets("digits")
    return Subset(query, list(range(0, len(query), 15)))  # 60 images of the 5 test classes


def _embed(model, data):
    embed(model, data)


def _robust(model, data):
    suite = AttackSuite(["centroid", "retrieval", "transfer", "noise", "displacement"], eps=[0.05, 0.1], steps=2)
    surrogate = _net(9).train()
    before = _snapshot(surrogate)
    evaluate_robustness(model, data, None, suite, threat=ThreatModel.of("digits"), surrogate=surrogate, kmeans_restarts=1)
    assert surrogate.training and _same(before, _snapshot(surrogate)), "the surrogate was changed"


def _robust_strong(model, data):
    """The strong suite cut to 2 iterations: APGD on every family, Square, the combinations, the
    ensemble's reweighted and per-member attacks and the checks' reruns."""
    suite = AttackSuite(**{**NAMED["strong"], "steps": 2, "eps_scale": [1.0],
                           "attack_kwargs": {"square-centroid-balanced": {"steps": 4}}})
    evaluate_robustness(model, data, None, suite, threat=ThreatModel.of("digits"), surrogate=_net(9),
                        kmeans_restarts=1)


def _ranking(model, data):
    evaluate_ranking(model, data, None, queries=10, attacks=["es", "ca+", "gtt"])


def _certify(model, data):
    certify(model, Subset(data, range(6)), None, smoothing=Smoothing(0.05, samples=40, center_samples=40, candidates=4, alpha=0.1, delta=0.3,
                                                                     batch_size=40), radii=[0.0, 0.001])


def _eot(model, data):
    eot_attack(model, data[0][0], lambda e: e.sum(1), eps=0.1, sigma=0.05, steps=2, draws=4)


ENTRY_POINTS = {"embed": _embed, "evaluate_robustness": _robust, "strong": _robust_strong,
                "evaluate_ranking": _ranking, "certify": _certify, "eot_attack": _eot}


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _modes(model):
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_evaluation_leaves_a_training_model_bit_identical(entry, model_name, test_set):
    model = MODELS[model_name]().train()
    modes, before = _modes(model), _snapshot(model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) and m.training for m in model.modules()) or model_name == "frozen-bn"
    ENTRY_POINTS[entry](model, test_set)
    assert _same(before, _snapshot(model)), f"{entry} changed the {model_name} model's parameters or buffers"
    assert _modes(model) == modes, f"{entry} did not give every submodule back its mode"


def test_the_check_can_fail():
    """Embedding in train mode (what robust evaluation used to do) does change the BatchNorm
    statistics, so the test above would see it."""
    model = _net(0).train()
    before = _snapshot(model)
    with torch.no_grad():
        model(torch.rand(8, 1, 8, 8))
    assert not _same(before, _snapshot(model))


def test_eval_mode_restores_mixed_modes():
    model = _net(3, freeze_bn=True).train()
    modes = _modes(model)
    assert True in modes and False in modes
    with eval_mode(model, None):
        assert not any(_modes(model))
    assert _modes(model) == modes


@pytest.mark.parametrize("method", ["pgd-at"])
def test_robust_validation_does_not_change_training(method, tmp_path):
    """The same seed and thread count with and without robust validation: bit-identical weights,
    proxies and BatchNorm statistics (an adversarial method's training adversary runs the model in
    eval mode, i.e. on those statistics, so a leak would change its whole training)."""
    saved = {}
    for robust in (True, False):
        overrides = ["epochs=2", "seed=3", f"method={method}", f"robust_eval={str(robust).lower()}"]
        if method == "pgd-at":
            overrides.append("method_kwargs.steps=2")
        out = tmp_path / str(robust)
        result = train(load_train_config(REPO / "configs" / "digits.yaml", overrides), out, progress=False)
        if robust:
            assert "robust_nmi" in result.clean  # the validation did run
        saved[robust] = (load_file(out / "last" / "model.safetensors"), load_checkpoint(out / "checkpoint.pt")["criterion"])
    (model_a, proxies_a), (model_b, proxies_b) = saved[True], saved[False]
    assert any("running_mean" in k for k in model_a)
    assert _same(model_a, model_b)
    assert _same(proxies_a, proxies_b)
