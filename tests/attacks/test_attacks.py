"""Invariants every registered attack must hold, for both norms."""

import pytest
import torch
import torch.nn.functional as F

from robustdml.attacks import ATTACKS, AttackContext, Norm, create_attack
from robustdml.data import get_dataset
from robustdml.errors import ConfigError
from robustdml.models import EnsembleNet, create_model

EPS = {Norm.LINF: 0.1, Norm.L2: 0.5}


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("small-cnn", embedding_dim=16)


@pytest.fixture(scope="module")
def batch():
    ds = get_dataset("digits", "test")
    return ds.images[:24].clone(), torch.as_tensor(ds.labels[:24])


def _context(model, x, y):
    was_training = model.training
    with torch.no_grad():
        emb = model.eval()(x)
    model.train(was_training)
    centroids = F.normalize(torch.randn(5, emb.shape[1], generator=torch.Generator().manual_seed(0)), dim=1)
    return AttackContext(centroids=centroids, assignments=(emb @ centroids.T).argmax(1), gallery=emb,
                         gallery_labels=y, labels=y, self_index=torch.arange(len(x)), surrogate=_model(7).eval())


def _run(name, norm, model, x, y, **kw):
    attack = create_attack(name, EPS[norm], steps=5, norm=norm, **kw)
    return attack(model, x, _context(model, x, y))


@pytest.mark.parametrize("norm", list(Norm))
@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attack_invariants(name, norm, mode, batch):
    x, y = batch
    original = x.clone()
    model = _model()
    model.train(mode == "train")
    x_adv = _run(name, norm, model, x, y, restarts=2 if name == "displacement" else 1)
    assert torch.equal(x, original), "the caller's tensor was modified"
    assert model.training == (mode == "train"), "the model's mode was not restored"
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm is Norm.LINF else delta.norm(dim=1)
    assert (size <= EPS[norm] + 1e-6).all()
    assert (size > 0).any(), "the attack did not perturb anything"


@pytest.mark.parametrize("name", sorted(n for n, cls in ATTACKS.items() if cls.white_box))
def test_white_box_attacks_raise_their_objective(name, batch):
    x, y = batch
    model = _model().eval()
    attack = create_attack(name, 0.1, steps=10)
    ctx = _context(model, x, y)
    x_adv = attack(model, x, ctx)
    with torch.no_grad():
        prepared = attack.prepare(model, x, ctx)
        before = attack.objective(model(x), prepared).mean()
        after = attack.objective(model(x_adv), prepared).mean()
    assert after > before + 1e-3


@pytest.mark.parametrize("name", sorted(n for n, cls in ATTACKS.items() if cls.white_box))
def test_gradients_flow_through_every_ensemble_member(name, batch):
    x, y = batch
    members = [_model(0), _model(1), _model(2)]
    ensemble = EnsembleNet(members).eval()
    plain = _run(name, Norm.LINF, ensemble, x, y)
    # zero the gradient that reaches the input through member 1 only
    hook = members[1].normalize.register_full_backward_hook(
        lambda m, gin, gout: tuple(None if g is None else torch.zeros_like(g) for g in gin))
    try:
        blocked = _run(name, Norm.LINF, ensemble, x, y)
    finally:
        hook.remove()
    assert not torch.equal(plain, blocked), "member 1's gradient does not reach the attack"


def test_zero_eps_returns_the_input(batch):
    x, y = batch
    model = _model()
    for name in ("displacement", "noise"):
        assert torch.equal(create_attack(name, 0.0)(model, x), x)


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -0.1}, "eps"), ({"eps": 0.1, "steps": 0}, "steps"), ({"eps": 0.1, "restarts": 0}, "restarts"),
    ({"eps": 0.1, "norm": "l3"}, "norm"), ({"eps": 0.1, "step_size": -1.0}, "step_size"),
])
def test_bad_attack_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_attack("displacement", **kwargs)
    with pytest.raises(ConfigError, match="unknown attack"):
        create_attack("fgsm-magic", 0.1)
