"""The batched ensemble (vmapped members) computes what the loop of members computes."""

import copy

import pytest
import torch

from robustdml.errors import ConfigError
from robustdml.methods import create_method
from robustdml.models import EnsembleNet, create_model
from robustdml.models.batched import BatchedEnsemble, can_batch


def _ensemble(combine="mean", members=3, dim=8):
    torch.manual_seed(0)
    ens = EnsembleNet([create_model("small-cnn", embedding_dim=dim) for _ in range(members)], combine=combine)
    # a few training batches so that BatchNorm's running statistics differ between members
    with torch.no_grad():
        for _ in range(2):
            ens.train()(torch.rand(16, 1, 8, 8))
    return ens.eval()


def test_can_batch_needs_one_architecture():
    assert can_batch(_ensemble())
    mixed = EnsembleNet([create_model("small-cnn", embedding_dim=8), create_model("small-cnn", embedding_dim=16)])
    assert not can_batch(mixed)
    assert not can_batch(create_model("small-cnn", embedding_dim=8))
    with pytest.raises(ValueError, match="architecture"):
        BatchedEnsemble(mixed)


@pytest.mark.parametrize("combine", ["mean", "concat"])
def test_batched_embedding_and_input_gradient_equal_the_loop(combine):
    ens = _ensemble(combine)
    before = copy.deepcopy(ens.state_dict())
    batched = BatchedEnsemble(ens).eval()
    x = torch.rand(12, 1, 8, 8, requires_grad=True)
    weights = torch.randn(12, ens(x).shape[1])  # a generic objective of the embedding
    looped = ens(x)
    g_loop, = torch.autograd.grad((looped * weights).sum(), x)
    vmapped = batched(x)
    g_vmap, = torch.autograd.grad((vmapped * weights).sum(), x)
    assert vmapped.shape == looped.shape
    torch.testing.assert_close(vmapped, looped, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_vmap, g_loop, rtol=1e-4, atol=1e-6)
    stacked = batched.stacked(x)
    torch.testing.assert_close(stacked[1], ens.members[1](x), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in ens.state_dict().items())  # the snapshot changed nothing


def test_batched_runs_in_eval_mode_only():
    batched = BatchedEnsemble(_ensemble()).train()
    with pytest.raises(RuntimeError, match="eval mode"):
        batched(torch.rand(2, 1, 8, 8))


def test_batched_option_values():
    assert create_method("eat", batched=True).batched == "on"  # YAML reads `on` as true
    assert create_method("eat", batched=False).batched == "off"
    assert create_method("eat").batched == "auto"
    with pytest.raises(ConfigError, match="batched"):
        create_method("eat", batched="sometimes")
    method = create_method("eat")
    ens = _ensemble()
    assert method.attacked(ens, torch.device("cpu")) is ens  # auto: the loop on the CPU
    assert isinstance(create_method("eat", batched="on").attacked(ens, torch.device("cpu")), BatchedEnsemble)
