"""Invariants every registered attack must hold, for both norms and every optimiser, on single
models and ensembles."""

import pytest
import torch
import torch.nn.functional as F

from robustdml.attacks import ATTACKS, AttackContext, Norm, create_attack
from robustdml.attacks.base import CleanPool
from robustdml.attacks.optim import Optimizer, apgd_checkpoints
from robustdml.data import get_dataset
from robustdml.errors import ConfigError
from robustdml.models import EnsembleNet, create_model

EPS = {Norm.LINF: 0.1, Norm.L2: 0.5}
GRADIENT = sorted(n for n, cls in ATTACKS.items() if cls.white_box)


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("small-cnn", embedding_dim=16)


@pytest.fixture(scope="module")
def batch():
    ds = get_dataset("digits", "test")
    idx = torch.arange(0, 240, 10)  # 24 images of every class
    return ds.images[idx].clone(), torch.as_tensor(ds.labels[idx.numpy()])


def _context(model, x, y, attack):
    """A full context: random centroids, the batch as its own gallery, and the attack's planned targets."""
    was_training = model.training
    with torch.no_grad():
        emb = model.eval()(x)
    model.train(was_training)
    centroids = F.normalize(torch.randn(5, emb.shape[1], generator=torch.Generator().manual_seed(0)), dim=1)
    clusters = (emb @ centroids.T).argmax(1)
    pool = CleanPool(emb, y, clusters, centroids, emb, y)
    return AttackContext(centroids=centroids, assignments=clusters, gallery=emb, gallery_labels=y, labels=y,
                         self_index=torch.arange(len(x)), surrogate=_model(7).eval(), targets=attack.plan(pool))


def _run(name, norm, model, x, y, **kw):
    attack = create_attack(name, EPS[norm], **{"steps": 5, "norm": norm, **kw})
    return attack(model, x, _context(model, x, y, attack))


def _assert_valid(x, x_adv, norm, original):
    assert torch.equal(x, original), "the caller's tensor was modified"
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm is Norm.LINF else delta.norm(dim=1)
    assert (size <= EPS[norm] + 1e-6).all()
    assert (size > 0).any(), "the attack did not perturb anything"


@pytest.mark.parametrize("norm", list(Norm))
@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attack_invariants(name, norm, mode, batch):
    x, y = batch
    original = x.clone()
    model = _model()
    model.train(mode == "train")
    x_adv = _run(name, norm, model, x, y, restarts=2 if name == "displacement" else 1)
    assert model.training == (mode == "train"), "the model's mode was not restored"
    _assert_valid(x, x_adv, norm, original)


@pytest.mark.parametrize("optimizer,steps", [("apgd", 6), ("square", 12)])
@pytest.mark.parametrize("norm", list(Norm))
@pytest.mark.parametrize("name", GRADIENT)
@pytest.mark.parametrize("ensemble", [False, True])
def test_invariants_with_every_optimizer_and_on_ensembles(name, norm, optimizer, steps, ensemble, batch):
    x, y = batch
    original = x.clone()
    model = EnsembleNet([_model(0), _model(1)]) if ensemble else _model()
    model.train()
    x_adv = _run(name, norm, model, x, y, optimizer=optimizer, steps=steps, reweight_members=ensemble)
    assert model.training, "the model's mode was not restored"
    _assert_valid(x, x_adv, norm, original)


@pytest.mark.parametrize("optimizer", ["pgd", "apgd", "square"])
@pytest.mark.parametrize("name", GRADIENT)
def test_attacks_raise_their_objective(name, optimizer, batch):
    x, y = batch
    model = _model().eval()
    attack = create_attack(name, 0.1, steps=40 if optimizer == "square" else 8, optimizer=optimizer)
    ctx = _context(model, x, y, attack)
    x_adv = attack(model, x, ctx)
    with torch.no_grad():
        prepared = attack.prepare(model, x, ctx)
        before = attack.objective(model(x), prepared).mean()
        after = attack.objective(model(x_adv), prepared).mean()
    assert after > before + 1e-3


@pytest.mark.parametrize("name", GRADIENT)
def test_apgd_is_at_least_as_strong_as_pgd_at_the_same_iterations(name, batch):
    x, y = batch
    model = _model().eval()
    values = {}
    for optimizer in ("pgd", "apgd"):
        attack = create_attack(name, 0.1, steps=12, optimizer=optimizer)
        ctx = _context(model, x, y, attack)
        x_adv = attack(model, x, ctx)
        with torch.no_grad():
            values[optimizer] = attack.objective(model(x_adv), attack.prepare(model, x, ctx)).mean()
    assert values["apgd"] >= values["pgd"] - 0.02


@pytest.mark.parametrize("name", GRADIENT)
@pytest.mark.parametrize("reweight", [False, True])
def test_gradients_flow_through_every_ensemble_member(name, reweight, batch):
    x, y = batch
    members = [_model(0), _model(1), _model(2)]
    ensemble = EnsembleNet(members).eval()
    plain = _run(name, Norm.LINF, ensemble, x, y, reweight_members=reweight)
    # zero the gradient that reaches the input through member 1 only
    hook = members[1].normalize.register_full_backward_hook(
        lambda m, gin, gout: tuple(None if g is None else torch.zeros_like(g) for g in gin))
    try:
        blocked = _run(name, Norm.LINF, ensemble, x, y, reweight_members=reweight)
    finally:
        hook.remove()
    assert not torch.equal(plain, blocked), "member 1's gradient does not reach the attack"


def test_apgd_checkpoint_schedule_is_the_published_one():
    # 100 iterations: first check after 22, gaps shrinking by 3 down to 6
    assert apgd_checkpoints(100)[:5] == [22, 41, 57, 70, 80]
    gaps = [b - a for a, b in zip([0] + apgd_checkpoints(100), apgd_checkpoints(100))]
    assert min(gaps) == 6 and all(g >= 6 for g in gaps)


def test_balanced_targets_spread_every_class_over_the_clusters(batch):
    x, y = batch
    model = _model().eval()
    attack = create_attack("centroid-balanced", 0.1)
    targets = _context(model, x, y, attack).targets
    for c in torch.unique(y):
        counts = torch.bincount(targets[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1, (int(c), counts.tolist())  # 24 images: ~5 per class, 1 per cluster


def test_feature_targets_are_other_classes(batch):
    x, y = batch
    model = _model().eval()
    for name in ("feature-nearest", "feature-balanced"):
        attack = create_attack(name, 0.1)
        targets = _context(model, x, y, attack).targets
        assert (y[targets] != y).all(), name


def test_zero_eps_returns_the_input(batch):
    x, y = batch
    model = _model()
    for name in ("displacement", "noise"):
        assert torch.equal(create_attack(name, 0.0)(model, x), x)


def test_a_missing_context_field_is_a_clear_error(batch):
    x, _ = batch
    with pytest.raises(ConfigError, match="needs centroids"):
        create_attack("centroid", 0.1)(_model(), x)


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -0.1}, "eps"), ({"eps": 0.1, "steps": 0}, "steps"), ({"eps": 0.1, "restarts": 0}, "restarts"),
    ({"eps": 0.1, "norm": "l3"}, "norm"), ({"eps": 0.1, "step_size": -1.0}, "step_size"),
    ({"eps": 0.1, "optimizer": "adam"}, "optimizer"), ({"eps": 0.1, "momentum": 0.9}, "takes no option"),
])
def test_bad_attack_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_attack("displacement", **kwargs)
    with pytest.raises(ConfigError, match="unknown attack"):
        create_attack("fgsm-magic", 0.1)


def test_optimizers_are_the_enum():
    assert {o.value for o in Optimizer} == {"pgd", "apgd", "square"}


def test_retrieval_objectives_on_constructed_embeddings():
    # gallery: two same-class items at cos 0.9 and 0.5, one other-class item at cos 0.85; self at index 3
    gallery = F.normalize(torch.tensor([[0.9, 0.436], [0.5, 0.866], [0.85, -0.527], [1.0, 0.0]]), dim=1)
    query = torch.tensor([[1.0, 0.0]])
    context = AttackContext(gallery=gallery, gallery_labels=torch.tensor([0, 0, 1, 0]), labels=torch.tensor([0]),
                            self_index=torch.tensor([3]))
    sims = (query @ gallery.T)[0]
    margin = create_attack("retrieval", 0.1)
    assert margin.objective(query, margin.prepare(None, query, context)).item() == pytest.approx(
        float(sims[2] - sims[0]), abs=1e-6)  # nearest negative - nearest positive; self ignored
    soft = create_attack("retrieval", 0.1, loss="softmax")
    logits = sims[:3] / soft.TEMPERATURE
    expected = logits.logsumexp(0) - logits[:2].logsumexp(0)  # -log p(same class), self excluded
    assert expected.item() > 1e-6
    assert soft.objective(query, soft.prepare(None, query, context)).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="retrieval loss"):
        create_attack("retrieval", 0.1, loss="hinge")


@pytest.mark.parametrize("norm", list(Norm))
def test_softmax_retrieval_attack_is_valid_and_lowers_recall(norm, batch):
    x, y = batch
    original = x.clone()
    model = _model().eval()
    attack = create_attack("retrieval", EPS[norm], steps=10, norm=norm, optimizer="apgd", loss="softmax")
    ctx = _context(model, x, y, attack)
    x_adv = attack(model, x, ctx)
    _assert_valid(x, x_adv, norm, original)
    with torch.no_grad():
        state = attack.prepare(model, x, ctx)
        assert attack.objective(model(x_adv), state).mean() > attack.objective(model(x), state).mean()
