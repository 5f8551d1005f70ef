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


def _setup(transfer="ensemble", split="random", members=3, objective="displacement", steps=3, images=30, **options):
    method = create_method("eat", members=members, transfer=transfer, split=split, eps=0.1, steps=steps,
                           objective=objective, **options)
    torch.manual_seed(0)
    model = method.build_model(lambda: create_model("small-cnn", embedding_dim=8)).train()
    criterion = method.build_criterion(lambda: create_loss("proxy_anchor", num_classes=5, embedding_dim=8))
    method.setup(TrainingSetup(num_samples=60, seed=0, threat=ThreatModel(0.1)))
    ds = get_dataset("digits", "train")
    x, y = ds.images[:images].clone(), torch.as_tensor(ds.labels[:images])
    return method, model, criterion, x, y, torch.arange(images)


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


def _loss_grads_and_state(**options):
    method, model, criterion, x, y, index = _setup(**options)
    torch.manual_seed(1)
    loss = method.loss(model, criterion, x, y, index)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()] + [p.grad.clone() for p in criterion.parameters()]
    return loss.detach(), grads, model.state_dict()


@pytest.mark.parametrize("objective", ["displacement", "loss"])
def test_batched_members_give_the_loops_loss_gradients_and_statistics(objective):
    loss_loop, grads_loop, state_loop = _loss_grads_and_state(batched="off", objective=objective)
    loss_vmap, grads_vmap, state_vmap = _loss_grads_and_state(batched="on", objective=objective)
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


def test_cross_transfer_crafts_each_members_examples_against_the_others_only():
    method, model, criterion, x, y, index = _setup("cross")

    def crafted(i):
        torch.manual_seed(3)
        return method.craft_for_member(model, criterion, i, x, y, index)

    before = crafted(0)
    with torch.no_grad():  # member 0 changes: its own examples do not
        for p in model.members[0].parameters():
            p.add_(0.5 * torch.randn_like(p))
    assert torch.equal(crafted(0), before)
    with torch.no_grad():  # another member changes: they do
        for p in model.members[1].parameters():
            p.add_(0.5 * torch.randn_like(p))
    assert not torch.equal(crafted(0), before)
    assert (before - x).abs().max() <= 0.1 + 1e-6 and before.min() >= 0 and before.max() <= 1


@pytest.mark.parametrize("options", [{"distill": 0.0}, {"distill": 0.0, "distill_target": "adversarial"},
                                     {"diversity": "gal", "diversity_weight": 0.0}])
def test_degenerate_readings_equal_todays_eat(options):
    loss, grads, state = _loss_grads_and_state()
    loss_r, grads_r, state_r = _loss_grads_and_state(**options)
    assert torch.equal(loss, loss_r)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_r))
    assert all(torch.equal(state[k], state_r[k]) for k in state)


def _train_briefly(steps=8, **options):
    """A few Adam steps of EAT on one digits batch; the trained ensemble and the batch."""
    method, model, criterion, x, y, index = _setup(split="none", steps=1, images=32, **options)
    optimiser = torch.optim.Adam(list(model.parameters()) + list(criterion.parameters()), lr=3e-3)
    for _ in range(steps):
        optimiser.zero_grad()
        method.loss(model, criterion, x, y, index).backward()
        optimiser.step()
    return model.eval(), criterion, x, y


def test_distillation_pulls_members_towards_the_ensemble():
    def spread(model, x):
        with torch.no_grad():
            ensemble = model(x)
            return float(sum((1 - (m(x) * ensemble).sum(1)).mean() for m in model.members))
    model, _, x, _ = _train_briefly()
    plain = spread(model, x)
    model, _, x, _ = _train_briefly(distill=20.0)
    assert spread(model, x) < 0.5 * plain


def test_gradient_alignment_penalty_lowers_the_members_gradient_cosine():
    from robustdml.methods.eat_terms import gradient_cosines, input_gradients

    def alignment(model, criterion, x, y):
        return float(gradient_cosines([g.detach() for g in input_gradients(model.members, criterion, x, y)]).mean())
    plain = alignment(*_train_briefly())
    diverse = alignment(*_train_briefly(diversity="gal", diversity_weight=20.0))
    assert diverse < plain - 0.05  # measured: 0.15 without the penalty, 0.06 with it


def test_shared_batchnorm_pools_statistics_over_every_members_rows():
    """With bn: shared a member's batch statistics include the other members' rows, so its gradient
    depends on them; with split none it is today's EAT exactly."""
    method, model, criterion, x, y, index = _setup(bn="shared")
    mine = method.masks(index)[0]
    before = _member_grads(method, model, criterion, x, y, index)
    outside = x.clone()
    outside[~mine] = torch.rand_like(outside[~mine])
    after = _member_grads(method, model, criterion, outside, y, index)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(before, after))
    loss, grads, state = _loss_grads_and_state(split="none")
    loss_s, grads_s, state_s = _loss_grads_and_state(split="none", bn="shared")
    torch.testing.assert_close(loss_s, loss)
    for a, b in zip(grads_s, grads):
        torch.testing.assert_close(a, b)
    assert all(torch.equal(state[k], state_s[k]) for k in state)


@pytest.mark.parametrize("options,match", [
    ({"bn": "pooled"}, "bn must be"), ({"bn": "shared", "transfer": "self"}, "transfer: ensemble"),
    ({"transfer": "cross", "members": 1}, "members >= 2"), ({"distill": -1.0}, "distill"),
    ({"distill_target": "teacher"}, "distill_target"), ({"diversity": "dvert"}, "diversity"),
    ({"diversity": "gal", "diversity_weight": -0.1}, "diversity_weight"),
    ({"diversity": "gal", "members": 1}, "members >= 2")])
def test_bad_reading_options(options, match):
    with pytest.raises(ConfigError, match=match):
        create_method("eat", **options)


def test_shared_batchnorm_without_batchnorm_is_a_config_error():
    method = create_method("eat", eps=0.1, steps=1, bn="shared")
    with pytest.raises(ConfigError, match="no BatchNorm"):  # refused when the ensemble is built
        method.build_model(lambda: create_model("c2f2", embedding_dim=8))  # C2F2 has no BatchNorm


@pytest.mark.parametrize("transfer", ["ensemble", "self"])
def test_the_free_step_moves_every_carried_perturbation_the_members_losses_reach(transfer):
    """With ``free_step``, after the update's backward pass each bank's perturbations move up the
    gradient of the members' losses: the ensemble's one bank, or each member's own."""
    method, model, criterion, x, y, index = _setup(transfer, steps=1, init="carry", free_step=True)
    method.loss(model, criterion, x, y, index).backward()
    slots = sorted(method.adversary.pending)
    assert slots == ([0] if transfer == "ensemble" else [0, 1, 2])
    found = {s: (adversarial.detach() - images, index) for s, (adversarial, images, index) in method.adversary.pending.items()}
    method.after_backward()
    for s in slots:
        bank = method.adversary.banks[s]
        delta, rows = found[s]
        kept = bank.values[rows].float() * (bank.eps / 127)  # what the visits' own steps found, moved on
        moved = ((kept - delta).abs() > bank.eps / 127).flatten(1).any(1)
        assert moved.float().mean() > 0.9  # (a pixel at the budget's edge may stay)
        assert bank.values.abs().max() <= 127
    assert not method.adversary.pending
