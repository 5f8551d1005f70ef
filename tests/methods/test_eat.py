import copy

import numpy as np
import pytest
import torch

import robustdml
from robustdml.attacks import ThreatModel
from robustdml.data import get_dataset
from robustdml.engine import config_from_dict, train
from robustdml.errors import ConfigError
from robustdml.losses import create_loss
from robustdml.methods import TrainingSetup, create_method
from robustdml.methods.eat import member_parts, partition
from robustdml.models import EnsembleNet, create_model


@pytest.mark.parametrize("n,parts", [(100, 3), (7, 3), (50, 5), (10, 1)])
def test_partition_is_disjoint_covering_and_seeded(n, parts):
    part_of = partition(n, parts, seed=4)
    assert part_of.shape == (n,) and set(part_of.tolist()) == set(range(parts))  # covering, every part used
    sizes = np.bincount(part_of, minlength=parts)
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 1  # disjoint, near-equal
    assert (partition(n, parts, seed=4) == part_of).all()
    if parts > 1 and n > 10:
        assert (partition(n, parts, seed=5) != part_of).any()


def test_member_parts():
    assert member_parts(3, 2) == [[1, 2], [0, 2], [0, 1]]  # all but part i
    assert member_parts(4, 1) == [[1], [2], [3], [0]]
    assert member_parts(3, 3) == [[0, 1, 2]] * 3


def _setup(transfer="ensemble", split="random", members=3, objective="displacement", batched="auto"):
    method = create_method("eat", members=members, transfer=transfer, split=split, eps=0.1, steps=3,
                           objective=objective, batched=batched)
    torch.manual_seed(0)
    model = method.build_model(lambda: create_model("small-cnn", embedding_dim=8)).train()
    criterion = method.build_criterion(lambda: create_loss("proxy_anchor", num_classes=5, embedding_dim=8))
    method.setup(TrainingSetup(num_samples=60, seed=0, threat=ThreatModel(0.1)))
    ds = get_dataset("digits", "train")
    x, y = ds.images[:30].clone(), torch.as_tensor(ds.labels[:30])
    return method, model, criterion, x, y, torch.arange(30)


def _member_grads(method, model, criterion, x, y, index, member=0):
    # each call starts from the same state (a training forward updates BatchNorm statistics)
    model, criterion = copy.deepcopy(model), copy.deepcopy(criterion)
    torch.manual_seed(1)
    method.loss(model, criterion, x, y, index).backward()
    return [p.grad.clone() for p in model.members[member].parameters()] + [criterion[member].proxies.grad.clone()]


@pytest.mark.parametrize("transfer", ["ensemble", "self"])
@pytest.mark.parametrize("objective", ["displacement", "loss"])
def test_member_gets_no_gradient_from_samples_outside_its_parts(transfer, objective):
    method, model, criterion, x, y, index = _setup(transfer, objective=objective)
    mine = method.masks(index)[0]
    assert mine.any() and not mine.all()
    before = _member_grads(method, model, criterion, x, y, index)
    outside = x.clone()
    outside[~mine] = torch.rand_like(outside[~mine])
    after = _member_grads(method, model, criterion, outside, y, index)
    if objective == "displacement" or transfer == "self":
        for a, b in zip(before, after):
            assert torch.allclose(a, b, atol=1e-6)
    inside = x.clone()
    inside[mine] = torch.rand_like(inside[mine])
    changed = _member_grads(method, model, criterion, inside, y, index)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(before, changed))


def test_split_none_trains_every_member_on_every_sample():
    method, *_, index = _setup(split="none")
    assert all(m.all() for m in method.masks(index))


def _block_member(model, i):
    return model.members[i].normalize.register_full_backward_hook(
        lambda m, gin, gout: tuple(None if g is None else torch.zeros_like(g) for g in gin))


@pytest.mark.parametrize("transfer,expect_change", [("ensemble", True), ("self", False)])
def test_ensemble_crafted_examples_take_gradients_through_all_members(transfer, expect_change):
    method, model, criterion, x, y, index = _setup(transfer)
    before = _member_grads(method, model, criterion, x, y, index, member=0)
    _block_member(model, 2)  # member 2's gradient no longer reaches the input
    after = _member_grads(method, model, criterion, x, y, index, member=0)
    changed = any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(before, after))
    assert changed == expect_change


def test_trained_ensemble_saves_and_loads_as_one_model(tmp_path):
    cfg = config_from_dict({"epochs": 1, "embedding_dim": 8, "batch_size": 64, "method": "eat",
                            "method_kwargs": {"members": 2, "steps": 1}, "robust_eval": False})
    train(cfg, tmp_path / "run", progress=False)
    model = robustdml.load_model(tmp_path / "run")
    assert isinstance(model, EnsembleNet) and len(model.members) == 2
    x = torch.rand(4, 1, 8, 8)
    emb = model(x)
    expected = torch.nn.functional.normalize(sum(m(x) for m in model.members), dim=1)
    assert torch.allclose(emb, expected, atol=1e-6)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    reloaded = EnsembleNet([create_model("small-cnn", embedding_dim=8) for _ in range(2)])
    reloaded.load_state_dict(state)
    assert torch.allclose(reloaded.eval()(x), emb, atol=1e-6)


def _loss_grads_and_state(batched, objective):
    method, model, criterion, x, y, index = _setup(objective=objective, batched=batched)
    torch.manual_seed(1)
    loss = method.loss(model, criterion, x, y, index)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()] + [p.grad.clone() for p in criterion.parameters()]
    return loss.detach(), grads, model.state_dict()


@pytest.mark.parametrize("objective", ["displacement", "loss"])
def test_batched_members_give_the_loops_loss_gradients_and_statistics(objective):
    loss_loop, grads_loop, state_loop = _loss_grads_and_state("off", objective)
    loss_vmap, grads_vmap, state_vmap = _loss_grads_and_state("on", objective)
    torch.testing.assert_close(loss_vmap, loss_loop, rtol=1e-5, atol=1e-5)
    assert len(grads_vmap) == len(grads_loop)
    for a, b in zip(grads_vmap, grads_loop):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for k in state_loop:  # the members' BatchNorm statistics move the same way
        torch.testing.assert_close(state_vmap[k].float(), state_loop[k].float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"members": 0}, "members"), ({"members": 3, "parts_per_member": 4}, "parts_per_member"),
    ({"split": "halves"}, "split"), ({"transfer": "other"}, "transfer"), ({"combine": "max"}, "combine"),
])
def test_bad_eat_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_method("eat", **kwargs)
