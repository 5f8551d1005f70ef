"""Graphed training passes: when a pass is replayed from a graph, when it runs eagerly, and that
training through the graphed view changes the model exactly as eager training does.

A CUDA graph needs a GPU; on the CPU a stand-in capture (eager passes behind the same bookkeeping,
its warm-up included) exercises everything but the graph itself, and the trainer falls back to
eager passes. The last test compares real graphs with eager passes where a GPU is present."""

import copy
import logging

import pytest
import torch

from robustdml.attacks.optim import gradient_ascent
from robustdml.attacks.context import Norm
from robustdml.engine import Trainer, config_from_dict
from robustdml.errors import ConfigError
from robustdml.methods import create_method
from robustdml.methods.base import TrainingSetup
from robustdml.attacks import ThreatModel
from robustdml.models import EnsembleNet, create_model
from robustdml.models.graphed import (GraphedModule, begin_step, capture_cuda, graph_count, graphed_view,
                                      input_gradients_only)


class StandIn:
    """A capture that runs the module eagerly, after the warm-up passes a real capture runs (which
    change BatchNorm's running statistics), and counts what it is asked for."""

    def __init__(self, fail: bool = False):
        self.captures, self.replays, self.input_only, self.fail = 0, 0, [], fail

    def __call__(self, module, sample, input_only):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        self.input_only.append(input_only)
        wanted = [p for p in module.parameters() if p.requires_grad] + ([sample] if sample.requires_grad else [])
        for _ in range(3):  # as make_graphed_callables warms up: gradients taken, none accumulated
            torch.autograd.grad(module(sample).sum(), wanted, allow_unused=True)

        def replay(x):
            self.replays += 1
            return module(x)
        return replay


def _net(seed=0):
    torch.manual_seed(seed)
    return create_model("small-cnn", embedding_dim=8)


def _graphed(module, capture, **options):
    return GraphedModule(module, capture=capture, devices=("cpu",), **options)


def test_a_kind_is_captured_the_second_time_it_is_seen_and_replayed_after():
    stand_in = StandIn()
    view = _graphed(_net().train(), stand_in)
    x = torch.rand(16, 1, 8, 8)
    for _ in range(4):
        begin_step(view)
        view(x).sum().backward()
    assert stand_in.captures == 1 and stand_in.replays == 3  # call 1 eager, 2 captures, 2-4 replay
    view(torch.rand(12, 1, 8, 8))  # another batch size: another kind, seen once
    with torch.no_grad():
        view(x)  # no gradient: eager, not a kind
    view.eval()
    view(x)  # eval mode: another kind
    assert stand_in.captures == 1 and len(view.seen) == 3
    assert view.key(torch.rand(16, 1, 8, 8, device="meta")) is None  # not on a graphed device


def test_a_kind_waiting_for_its_backward_runs_eagerly_until_then():
    stand_in = StandIn()
    view = _graphed(_net().train(), stand_in)
    x = torch.rand(16, 1, 8, 8)
    view(x).sum().backward()
    view(x).sum().backward()  # captured and replayed
    first = view(x)          # a replay whose backward has not run
    view(x)                  # the same kind again: its graph's activations are still needed
    assert stand_in.replays == 2
    first.sum().backward()   # released
    view(x)
    assert stand_in.replays == 3
    begin_step(view)         # a new step releases a replay nobody differentiated
    view(x)
    assert stand_in.replays == 4


def test_the_output_is_the_callers_own():
    net = _net().train()
    shared = torch.zeros(16, 8)
    view = _graphed(net, lambda module, sample, input_only: (lambda x: shared))
    x = torch.rand(16, 1, 8, 8)
    view(x)
    view(x)
    out = view(x)  # a replay: the graph's fixed output memory
    assert out.data_ptr() != shared.data_ptr()
    shared += 1
    assert out.abs().sum() == 0  # a later replay does not change what the caller holds


def test_attack_calls_are_their_own_kind_and_capture_without_the_weights_gradients():
    stand_in = StandIn()
    net = _net().train()
    view = _graphed(net, stand_in)
    x = torch.rand(16, 1, 8, 8)
    for _ in range(3):  # as the training adversary calls the model: only the input's gradient
        gradient_ascent(lambda z: -view(z).sum(1), x, torch.zeros_like(x), 0.1, Norm.LINF, 1, 0.05)
    for _ in range(2):
        view(x).sum().backward()
    assert stand_in.input_only == [True, False]
    attacked = x.clone().requires_grad_(True)
    with input_gradients_only():
        assert view.key(attacked)[5] is True
    assert view.key(attacked)[5] is False


def test_capture_leaves_batchnorm_statistics_as_eager_training_leaves_them():
    torch.manual_seed(1)
    batches = [torch.rand(16, 1, 8, 8) for _ in range(4)]
    eager, graphed_net = _net().train(), _net().train()
    view = _graphed(graphed_net, StandIn())
    for x in batches:
        eager(x).sum().backward()
        begin_step(view)
        view(x).sum().backward()
    for (name, a), b in zip(eager.named_buffers(), graphed_net.buffers()):
        assert torch.equal(a, b), name  # the warm-up's three passes left no trace
    for a, b in zip(eager.parameters(), graphed_net.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_a_failed_capture_warns_once_and_runs_eagerly(caplog):
    stand_in = StandIn(fail=True)
    members = [_graphed(_net(i).train(), stand_in) for i in range(3)]
    x = torch.rand(16, 1, 8, 8)
    with caplog.at_level(logging.WARNING, logger="robustdml"):
        for member in members:
            for _ in range(3):
                member(x).sum().backward()
    assert caplog.text.count("CUDA graph capture failed") == 1 and "stream is capturing" in caplog.text
    assert all(m.failed and not m.graphs for m in members)


def test_capture_cuda_puts_the_module_back_when_it_fails():
    net = _net().train()
    forward = net.forward
    with pytest.raises(Exception):
        capture_cuda(net, torch.rand(4, 1, 8, 8, device="meta"), input_only=True)
    assert all(p.requires_grad for p in net.parameters()) and "forward" not in net.__dict__
    assert net.forward == forward


def test_the_view_of_an_ensemble_shares_its_members_and_trains_them_as_the_loop_does():
    torch.manual_seed(0)
    members = [create_model("small-cnn", embedding_dim=8) for _ in range(3)]
    ensemble, twin = EnsembleNet(members).train(), EnsembleNet(copy.deepcopy(members)).train()
    view = graphed_view(ensemble, capture=StandIn(), devices=("cpu",))
    assert isinstance(view, EnsembleNet) and all(isinstance(m, GraphedModule) for m in view.members)
    assert {id(p) for p in view.parameters()} == {id(p) for p in ensemble.parameters()}
    assert view.head_parameters() == ensemble.head_parameters()
    method = create_method("eat", members=3, steps=2, init="carry")
    threat = ThreatModel(0.1, Norm.LINF)
    loss_fn = _RowLoss()
    method.setup(TrainingSetup(num_samples=64, seed=0, threat=threat))
    twin_method = create_method("eat", members=3, steps=2, init="carry")
    twin_method.setup(TrainingSetup(num_samples=64, seed=0, threat=threat))
    for step in range(3):
        x, y, index = torch.rand(16, 1, 8, 8), torch.arange(16) % 4, torch.arange(16) + 16 * (step % 2)
        for model, m in ((view, method), (twin, twin_method)):
            torch.manual_seed(step)
            begin_step(model)
            m.loss(model, torch.nn.ModuleList([loss_fn] * 3), x, y, index).backward()
    assert graph_count(view) > 0
    for a, b in zip(ensemble.parameters(), twin.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)
    for a, b in zip(ensemble.buffers(), twin.buffers()):
        assert torch.allclose(a.float(), b.float())


class _RowLoss(torch.nn.Module):
    """A loss with gradients everywhere: pull each embedding towards its class's mean."""

    def forward(self, embedding, labels):
        means = torch.stack([embedding[labels == c].mean(0) if (labels == c).any() else embedding.mean(0)
                             for c in range(4)])
        return (embedding - means[labels].detach()).pow(2).sum(1).mean()


def test_methods_that_take_second_derivatives_are_not_graphed():
    assert create_method("eat", members=2, diversity="gal").graphable is False
    assert create_method("eat", members=2).graphable and create_method("pgd-at").graphable


def test_the_trainer_falls_back_to_eager_passes_on_the_cpu(tmp_path, caplog):
    cfg = config_from_dict({"epochs": 1, "embedding_dim": 8, "batch_size": 64, "robust_eval": False,
                            "method": "pgd-at", "method_kwargs": {"steps": 1}, "cuda_graphs": "on"})
    with caplog.at_level(logging.INFO, logger="robustdml"):
        trainer = Trainer(cfg, tmp_path / "on", progress=False)
    assert trainer.step_model is trainer.model and "needs a CUDA device" in caplog.text
    auto = Trainer(config_from_dict({**cfg.to_dict(), "cuda_graphs": "auto"}), tmp_path / "auto", progress=False)
    assert auto.step_model is auto.model
    assert config_from_dict({"cuda_graphs": False}).graph_mode == "off"  # YAML's bare off
    with pytest.raises(ConfigError, match="cuda_graphs"):
        config_from_dict({"cuda_graphs": "sometimes"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_training_on_a_gpu_matches_eager_training(tmp_path):
    def run(mode):
        cfg = config_from_dict({"epochs": 1, "backbone": "small-cnn", "dataset": "digits", "embedding_dim": 16,
                                "batch_size": 64, "robust_eval": False, "amp": False, "method": "pgd-at",
                                "method_kwargs": {"steps": 3, "init": "carry"}, "cuda_graphs": mode, "seed": 0,
                                "workers": 0})
        torch.backends.cudnn.deterministic = True
        trainer = Trainer(cfg, tmp_path / mode, progress=False)
        trainer.train_epoch(0)
        return trainer
    graphed, eager = run("on"), run("off")
    assert graph_count(graphed.step_model) > 0
    for a, b in zip(graphed.model.parameters(), eager.model.parameters()):
        assert torch.allclose(a, b, atol=1e-3)


def test_a_pass_no_gradient_goes_through_is_not_a_kind():
    net = _net().train()
    view = _graphed(net, StandIn())
    x = torch.rand(16, 1, 8, 8)
    with input_gradients_only():
        assert view.key(x) is None  # an attack's pass on an input that needs no gradient
    for p in net.parameters():
        p.requires_grad_(False)
    assert view.key(x) is None and view.key(x.clone().requires_grad_(True)) is not None
