"""The evaluation core: a session computes its clean state once and shares it; the protocols over it
give the figures they give on their own; its settings are checked; the protocol sketch of
docs/extending.md runs as written."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

import robustdml.evaluation.session as session_module
from robustdml import EvalSettings, EvaluationSession
from robustdml.attacks import ThreatModel, create_attack
from robustdml.data import evaluation_sets
from robustdml.errors import ConfigError
from robustdml.evaluation.certify import Smoothing, certify
from robustdml.evaluation.ranking import evaluate_ranking
from robustdml.evaluation.robust import evaluate_robustness
from robustdml.evaluation.suite import AttackSuite
from robustdml.models.modes import eval_mode


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, x):
        return F.normalize(self.body(x), dim=1)


@pytest.fixture(scope="module")
def data():
    query, _ = evaluation_sets("digits", None)
    return Subset(query, list(range(0, len(query), 6)))


def _counting(monkeypatch):
    calls = {"embed": 0, "kmeans": 0}
    real_embed, real_kmeans = session_module.embed, session_module.kmeans

    def embed(*a, **k):
        calls["embed"] += 1
        return real_embed(*a, **k)

    def kmeans(*a, **k):
        calls["kmeans"] += 1
        return real_kmeans(*a, **k)

    monkeypatch.setattr(session_module, "embed", embed)
    monkeypatch.setattr(session_module, "kmeans", kmeans)
    return calls


def test_the_clean_state_is_computed_once_and_shared(data, monkeypatch):
    calls = _counting(monkeypatch)
    session = EvaluationSession(Net().eval(), data, settings=EvalSettings(seed=1, kmeans_restarts=1, ks=(1, 2)))
    assert calls == {"embed": 0, "kmeans": 0}  # nothing before it is asked for
    clean = session.clean
    other = session.sharing(plan_seed=5)
    assert other.clean is clean and other.clean_emb is session.clean_emb
    assert other.clean_pool.seed == 5 and session.clean_pool.seed == 1
    assert calls == {"embed": 1, "kmeans": 1}
    assert set(clean) >= {"nmi", "f1", "ari", "recall@1", "recall@2", "map@r"}


def test_protocols_on_one_session_give_their_own_figures(data):
    model = Net().eval()
    suite = AttackSuite(["centroid", "noise"], steps=2, seed=0, checks=False, batch_size=64)
    alone = evaluate_robustness(model, data, None, suite, threat=ThreatModel(0.1), ks=(1, 2), kmeans_seed=0,
                                kmeans_restarts=2)
    session = EvaluationSession(model, data, settings=EvalSettings(seed=0, kmeans_restarts=2, batch_size=64, ks=(1, 2)))
    shared = evaluate_robustness(model, suite=suite, threat=ThreatModel(0.1), session=session)
    assert shared.to_dict() | {"seconds": 0} == alone.to_dict() | {"seconds": 0}
    ranking = evaluate_ranking(model, attacks=["tma"], queries=20, seed=0, session=session)
    own = evaluate_ranking(model, data, attacks=["tma"], queries=20, seed=0, kmeans_restarts=2)
    assert ranking.columns == own.columns and ranking.clean["nmi"] == own.clean["nmi"]
    smoothing = Smoothing(sigma=0.1, samples=50, center_samples=60, alpha=0.2, delta=0.2, batch_size=60)
    small = session.with_queries(np.arange(5))
    a = certify(model, smoothing=smoothing, radii=[0.0], session=small).to_dict()
    b = certify(model, Subset(data, list(range(5))), smoothing=smoothing, radii=[0.0]).to_dict()
    a.pop("seconds_per_image"), b.pop("seconds_per_image")
    assert a == b


@pytest.mark.parametrize("bad", [{"kmeans_restarts": 0}, {"batch_size": 1.5}, {"ks": ()}, {"ks": (0,)},
                                 {"layout": "nhwc"}])
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(ConfigError):
        EvalSettings(**bad)


def test_the_protocol_sketch_of_the_docs_runs(data):
    """docs/extending.md, "A new evaluation protocol", as written there."""
    def mean_shift(session: EvaluationSession, eps: float) -> float:
        attack = create_attack("displacement", eps, steps=10)
        targets = session.plan(attack)
        total = 0.0
        with eval_mode(session.model):
            for images, labels, index in session.batches():
                x_adv = attack(session.model, images, session.context(labels, index, targets))
                with torch.no_grad():
                    total += float((session.model(x_adv).cpu() - session.clean_emb[index]).norm(dim=1).sum())
        return total / len(session.pool)

    model = Net().train()
    session = EvaluationSession(model, data, settings=EvalSettings(seed=0, ks=(1, 2, 4, 8)))
    shift = mean_shift(session, 0.1)
    assert 0 < shift < 2 and 0 <= session.clean["nmi"] <= 1
    assert model.training  # given back as it came


def test_processes_share_an_evaluation_only_when_asked(data, monkeypatch):
    """Training's robust validation runs in the first process alone while the group is open: a
    session that shared by itself would wait for processes that never come."""
    from robustdml.evaluation.shards import Shards
    monkeypatch.setattr(Shards, "of_launch", classmethod(lambda cls: cls(0, 2)))  # as if two processes were open
    model = nn.Linear(1, 1)
    assert EvaluationSession(model, data).shards == Shards(0, 1)
    assert EvaluationSession(model, data, settings=EvalSettings(distributed=True)).shards == Shards(0, 2)


def test_attacks_perturb_channels_last_images_on_the_cpu_for_own_models_only(data):
    from robustdml.models import create_model
    torch.manual_seed(0)
    own = create_model("small-cnn", embedding_dim=16, in_channels=1, pretrained=False).eval()
    assert EvaluationSession(own, data).attack_layout == "channels-last"
    assert EvaluationSession(Net().eval(), data).attack_layout == "as-given"  # it may view its input
    assert EvaluationSession(own, data, settings=EvalSettings(layout="as-given")).attack_layout == "as-given"

    seen = []

    class Recording(nn.Module):  # what the attack hands the model, recorded
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            seen.append(x.stride(1) == 1)  # channels innermost (a contiguous 1-channel batch has stride 64 there)
            return self.inner(x)

    attack = create_attack("displacement", eps=0.1, steps=3, optimizer="pgd")
    figures = {}
    for layout in ("channels-last", "as-given"):
        session = EvaluationSession(Recording(own), data, settings=EvalSettings(kmeans_restarts=1, layout=layout))
        session.clean_emb  # the clean embedding is not an attack's: as it comes
        seen.clear()
        figures[layout] = session.attack(attack)[0]
        assert seen and all(seen) == (layout == "channels-last")
        assert not session.model._forward_pre_hooks and not session.model._forward_hooks  # given back bare
    # the same attack either way, its sums in another order: as strong (a sign step flipped by the
    # last bit may send an image another way, so not bit for bit)
    clean = session.clean_emb
    moved = [float(1 - (figures[k] * clean).sum(1).mean()) for k in ("channels-last", "as-given")]
    assert moved[1] > 0.01 and abs(moved[0] / moved[1] - 1) < 0.02, moved
