"""Center-smoothing certificates: the geometry of the margins, the settings' errors, a model robust by
construction, and soundness against an EOT attack on trained digits models (slow)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from robustdml.errors import ConfigError
from robustdml.evaluation.certify import (Smoothing, certify, eot_attack, retrieval_margin, smoothed_center,
                                          voronoi_margin)


def test_voronoi_margin_is_the_distance_to_the_bisector():
    z = np.array([[0.5, 0.0], [-0.2, 0.1]])
    centroids = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0]])
    assign, margin = voronoi_margin(z, centroids)
    assert assign.tolist() == [0, 1]
    assert margin[0] == pytest.approx(0.5) and margin[1] == pytest.approx(0.2)


def test_retrieval_margin_halves_the_gap_and_skips_the_query_itself():
    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    labels = np.array([0, 0, 1])
    correct, margin = retrieval_margin(gallery, labels, gallery, labels, np.arange(3))
    assert correct.tolist() == [True, True, False]
    assert margin[0] == pytest.approx((3.0 - 1.0) / 2)      # own class at 1, other class at 3
    assert margin[2] == -np.inf  # no other item of its class: never correct
    correct, margin = retrieval_margin(np.array([[0.0, 2.0]]), np.array([0]), gallery, labels, None)
    assert not correct[0] and margin[0] == pytest.approx((1.0 - 2.0) / 2)  # wrong answer: negative margin


@pytest.mark.parametrize("kwargs,match", [
    ({"sigma": 0.0}, "sigma must be positive"),
    ({"sigma": -1.0}, "sigma must be positive"),
    ({"sigma": 0.25, "center_samples": 100}, "too few.*use at least 1199"),
    ({"sigma": 0.25, "alpha": 1.5}, "alpha"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Smoothing(**kwargs)


def test_radius_beyond_what_the_samples_certify_is_an_error():
    smoothing = Smoothing(sigma=0.1, samples=100)
    with pytest.raises(ConfigError, match="cannot be certified.*largest"):
        certify(nn.Identity(), [], smoothing=smoothing, radii=[smoothing.largest_radius() + 0.01])


class Level(nn.Module):
    """Embeds an image by its mean brightness rounded to one of four levels: robust by construction."""

    def forward(self, x):
        level = (x.flatten(1).mean(1) * 3).round().clamp(0, 3).long()
        return F.one_hot(level, 4).float()


class Images(torch.utils.data.Dataset):
    def __init__(self, n_per_class=6):
        self.items = [(torch.full((1, 8, 8), c / 3), c) for c in range(4) for _ in range(n_per_class)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_a_model_robust_by_construction_is_certified():
    smoothing = Smoothing(sigma=0.1, samples=2000, center_samples=1200, batch_size=2000)
    found = certify(Level(), Images(), smoothing=smoothing, radii=[0.0, 0.05, 0.15])
    assert found.abstained == 0 and found.clean["nmi"] == pytest.approx(1.0) and found.clean["recall@1"] == 1.0
    # the noise of the mean of 64 pixels never crosses a level, so the ball has radius 0 at every radius
    assert found.certified_assignment == [1.0, 1.0, 1.0] and found.certified_recall_at_1 == [1.0, 1.0, 1.0]
    assert set(found.per_image["assignment_radius"]) == {0.15}
    # the ball is 0 at every radius; the margins are finite and positive; all of it is plain JSON
    assert all(ball == [0.0, 0.0, 0.0] for ball in found.per_image["ball"])
    assert min(found.per_image["assignment_margin"]) > 0 and min(found.per_image["answer_margin"]) > 0
    json.dumps(found.to_dict(), allow_nan=False)


def test_a_model_that_flips_under_the_noise_gets_no_certificate():
    class Coin(nn.Module):
        def forward(self, x):  # which side of 0.5 one pixel falls: a coin flip under the noise
            return F.one_hot((x[:, 0, 0, 0] > 0.5).long() + 2 * (x.flatten(1).mean(1) > 0.5).long(), 4).float()

    class Half(Images):
        def __init__(self):
            self.items = [(torch.full((1, 8, 8), 0.5), i % 2) for i in range(6)]

    smoothing = Smoothing(sigma=1.0, samples=2000, center_samples=1200, batch_size=2000)
    found = certify(Coin(), Half(), smoothing=smoothing, radii=[0.1, 0.5])
    # four faces, each about a quarter of the draws: the ball must reach across (sqrt 2), beyond every boundary
    assert found.certified_assignment == [0.0, 0.0] and found.certified_recall_at_1 == [0.0, 0.0]


def _soundness(model, dataset, sigma, radii):
    """EOT attacks within each certified radius; returns (checked, violations) for assignments and R@1."""
    smoothing = Smoothing(sigma=sigma, samples=4000, center_samples=3000, alpha=0.01, batch_size=2000, seed=1)
    found = certify(model, dataset, smoothing=smoothing, radii=radii)
    centroids = torch.tensor(found.centroids, dtype=torch.float32)
    gz, gl, self_index = (torch.as_tensor(found.gallery[0]), torch.as_tensor(found.gallery[1]), found.gallery[2])
    labels = found.per_image["labels"]
    generator = torch.Generator().manual_seed(2)
    counts = {"assignment": [0, 0], "recall": [0, 0]}
    for i, (r_assign, r_recall) in enumerate(zip(found.per_image["assignment_radius"], found.per_image["recall_radius"])):
        x = dataset[i][0]
        if r_assign > 0:
            a = found.per_image["assignment"][i]
            others = [j for j in range(len(centroids)) if j != a]

            def leave_cell(emb):
                d = torch.cdist(emb, centroids) ** 2
                return d[:, a] - d[:, others].min(1).values

            x_adv = eot_attack(model, x, leave_cell, r_assign, sigma, steps=10, draws=16, seed=i)
            assert (x_adv - x).norm() <= r_assign + 1e-4 and x_adv.min() >= 0 and x_adv.max() <= 1
            center, good = smoothed_center(model, x_adv, smoothing, generator)
            if good:
                counts["assignment"][0] += 1
                counts["assignment"][1] += int(torch.cdist(center[None], centroids).argmin()) != a
        if r_recall > 0:
            mask = torch.ones(len(gz), dtype=torch.bool)
            mask[self_index[i]] = False
            same = (gl == labels[i]) & mask
            other = (gl != labels[i]) & mask

            def mislead(emb):
                d = torch.cdist(emb, gz)
                return d[:, same].min(1).values - d[:, other].min(1).values

            x_adv = eot_attack(model, x, mislead, r_recall, sigma, steps=10, draws=16, seed=i)
            center, good = smoothed_center(model, x_adv, smoothing, generator)
            if good:
                d = torch.cdist(center[None], gz)[0].masked_fill(~mask, float("inf"))
                counts["recall"][0] += 1
                counts["recall"][1] += int(gl[int(d.argmin())]) != labels[i]
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("method", ["standard", "eat"])
def test_certificates_withstand_an_eot_attack_on_digits(method, tmp_path):
    from robustdml import load_model
    from robustdml.data import get_dataset
    from robustdml.engine import config_from_dict, train
    cfg = config_from_dict({"epochs": 10, "embedding_dim": 16, "batch_size": 64, "lr": 0.001, "method": method,
                            "method_kwargs": {"steps": 2} if method == "eat" else {}, "noise_sigma": 0.03,
                            "robust_eval": False, "seed": 0})
    train(cfg, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")
    test = get_dataset("digits", "test")
    counts = _soundness(model, Subset(test, list(range(0, len(test), 15))), 0.03, [0.01, 0.02, 0.05])
    assert counts["assignment"][0] + counts["recall"][0] > 0, "nothing was certified: the test checks nothing"
    assert counts["assignment"][1] == 0 and counts["recall"][1] == 0, counts
