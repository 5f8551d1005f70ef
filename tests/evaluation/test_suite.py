"""The attack suites: named suites are fixed, the combinations and ensemble variants run and enter the
worst case, and the masking checks catch a model whose gradients are zeroed."""

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import robustdml
from robustdml.attacks import ThreatModel
from robustdml.data import evaluation_sets
from robustdml.errors import ConfigError
from robustdml.evaluation import combine
from robustdml.evaluation.robust import evaluate_robustness
from robustdml.evaluation.suite import NAMED, AttackSuite
from robustdml.models import EnsembleNet, create_model

THREAT = ThreatModel(0.1)


def _small_pool(step=8):
    query, _ = evaluation_sets("digits")
    return Subset(query, range(0, len(query), step))


def test_named_suites_are_fixed():
    assert {"strong", "complete", "fast"} <= set(NAMED)
    strong = AttackSuite("strong")
    labels = [s.label for s in strong.specs()]
    assert {"centroid-balanced", "feature-balanced", "retrieval", "square-centroid-balanced", "noise"} <= set(labels)
    assert all(s.optimizer in ("apgd", "square") for s in strong.specs() if s.attack != "noise")
    assert strong.eps_values(THREAT) == [0.05, 0.1, 0.15] and strong.main_eps(THREAT) == 0.1
    for key, value in (("steps", 20), ("restarts", 2), ("attack_kwargs", {"retrieval": {"steps": 5}})):
        with pytest.raises(ConfigError, match="strong suite is fixed"):
            AttackSuite("strong", **{key: value})
    assert AttackSuite("strong", eps=[0.2]).eps_values(THREAT) == [0.2]  # budgets may be chosen


@pytest.mark.parametrize("kwargs,match", [
    ({"attacks": ["centroid"], "attack_kwargs": {"retrieval": {}}}, "not in the suite"),
    ({"attacks": [{"label": "a", "attack": "centroid"}, {"label": "a", "attack": "retrieval"}]}, "unique"),
    ({"attacks": [{"attack": "centroid", "optimizer": "adam"}]}, "optimizer"),
    ({"attacks": [{"attack": "centroid", "momentum": 1}]}, "takes no option"),
    ({"attacks": ["nope"]}, "unknown attack"),
])
def test_bad_suites_are_one_line_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AttackSuite(**kwargs)


def test_combinations_pick_per_sample_and_enter_the_worst_case(digits_run):
    run, _ = digits_run
    suite = AttackSuite([{"attack": "centroid-balanced", "optimizer": "apgd"}, {"attack": "retrieval", "optimizer": "apgd"},
                         "noise"], eps=[0.1], steps=5, combine=True, checks=False)
    found = evaluate_robustness(robustdml.load_model(run), _small_pool(12), None, suite, threat=THREAT)
    assert {"combo-margin", "combo-spread", "combo-retrieval"} <= set(found.attacks)
    worst = found.worst["0.1"]
    for per_eps in found.attacks.values():
        assert all(worst[m] <= v for m, v in per_eps["0.1"].items())
    # the per-query retrieval choice is at least as strong on R@1 as each of its candidates
    assert found.attacks["combo-retrieval"]["0.1"]["recall@1"] <= min(
        found.attacks[a]["0.1"]["recall@1"] for a in ("centroid-balanced", "retrieval", "noise")) + 1e-9


def test_margin_choice_takes_the_largest_margin():
    centroids = torch.eye(3)
    clusters = torch.tensor([0, 1])
    candidates = torch.tensor([[[1.0, 0, 0], [0, 0, 1.0]],     # candidate 0: image 0 stays, image 1 moves
                               [[0, 1.0, 0], [0, 1.0, 0]]])    # candidate 1: image 0 moves, image 1 stays
    assert combine.margin_choice(candidates, centroids, clusters).tolist() == [1, 0]


def test_spread_choice_spreads_a_class_over_clusters():
    centroids = torch.eye(2)
    candidates = torch.tensor([[[1.0, 0]] * 4, [[0, 1.0]] * 4])  # candidate 0 lands in cluster 0, candidate 1 in 1
    choice = combine.spread_choice(candidates, centroids, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    landed = combine.pick(candidates, choice).argmax(1)
    assert sorted(landed.tolist()) == [0, 0, 1, 1]


def test_ensemble_variants_run_and_are_checked():
    torch.manual_seed(0)
    model = EnsembleNet([create_model("small-cnn", embedding_dim=16) for _ in range(2)]).eval()
    suite = AttackSuite([{"attack": "centroid-balanced", "optimizer": "apgd"}, "noise"], eps=[0.1], steps=3,
                        ensemble_reweighted=["centroid-balanced"], member_transfer=["centroid-balanced"])
    found = evaluate_robustness(model, _small_pool(16), None, suite, threat=THREAT)
    assert {"centroid-balanced-reweighted", "member0:centroid-balanced", "member1:centroid-balanced"} <= set(found.attacks)
    assert found.checks["member_transfer_not_stronger"]["passed"] in (True, False)
    assert set(found.checks["member_transfer_not_stronger"]["compared"]) == {"member0:centroid-balanced",
                                                                           "member1:centroid-balanced"}


class _ZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class GradientMasked(nn.Module):
    """A model whose input gradient is zero everywhere: gradient attacks stand still."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_ZeroGrad.apply(x))


def test_square_beating_a_gradient_masked_model_fails_the_masking_check(digits_run):
    run, _ = digits_run
    masked = GradientMasked(robustdml.load_model(run)).eval()
    suite = AttackSuite([{"attack": "centroid-balanced", "optimizer": "apgd", "random_init": False},
                         {"label": "square", "attack": "centroid-balanced", "optimizer": "square", "steps": 200}],
                        eps=[0.1], steps=10)
    found = evaluate_robustness(masked, _small_pool(8), None, suite, threat=THREAT)
    assert found.attacks["square"]["0.1"]["nmi"] < found.attacks["centroid-balanced"]["0.1"]["nmi"] - 0.05
    assert found.checks["square_not_stronger"]["passed"] is False
