"""The copy an evaluation's attacks differentiate through: the model's function with BatchNorm folded
away, the model itself untouched, and the figures computed from the model itself."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from robustdml import EvalSettings, EvaluationSession
from robustdml.attacks import create_attack
from robustdml.data import evaluation_sets
from robustdml.models import EnsembleNet, create_model
from robustdml.models.fused import attack_copy


def _ensemble(seed=0):
    torch.manual_seed(seed)
    model = EnsembleNet([create_model("small-cnn", embedding_dim=16, in_channels=1) for _ in range(3)])
    for m in model.modules():  # statistics and affine parameters of a trained model, not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    return model


def _bn_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _value_and_grad(model, x, w):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad((out * w).sum(), x)
    return out.detach(), g


def test_the_copy_is_the_models_function_without_batchnorm_and_the_model_is_untouched():
    model = _ensemble().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = attack_copy(model)
    assert _bn_layers(model) and not _bn_layers(fast)
    assert model.training and all(m.training for m in model.modules())  # its mode as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.is_contiguous() for p in model.parameters())  # its layout as it was too
    assert all(not p.requires_grad for p in fast.parameters()) and all(p.requires_grad for p in model.parameters())

    x, w = torch.rand(32, 1, 8, 8), torch.randn(32, 16)
    assert torch.allclose(fast(x), model.eval()(x), atol=1e-5)
    # the members too: the member-reweighted objectives call them one by one
    assert torch.allclose(fast.members[1](x), model.members[1](x), atol=1e-5)

    # The gradients, in float64: in float32 the two orders of summation differ by ~1e-7, enough to
    # move a pre-activation across ReLU's kink or flip a max-pool tie on some CPUs' kernels, and the
    # gradient of that one image then differs where the function does not.
    model64 = model.double()
    fast64 = attack_copy(model64)
    x64, w64 = x.double(), w.double()
    out, grad = _value_and_grad(model64, x64, w64)
    out_fast, grad_fast = _value_and_grad(fast64, x64, w64)
    assert torch.allclose(out_fast, out, atol=1e-12)
    assert (grad_fast - grad).norm() < 1e-10 * grad.norm()


def test_a_backbone_fx_cannot_trace_keeps_its_batchnorm_and_its_function():
    class Branching(nn.Module):  # control flow on the data: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y if y.sum() > -1e9 else -y

    model = create_model("small-cnn", embedding_dim=16, in_channels=1)
    model.backbone, model.embedding = Branching(), nn.Linear(4, 16)
    fast = attack_copy(model.eval())
    assert len(_bn_layers(fast)) == 1
    x = torch.rand(8, 1, 8, 8)
    assert torch.allclose(fast(x), model(x), atol=1e-6)


def test_sessions_attack_the_copy_and_compute_figures_from_the_model():
    query, _ = evaluation_sets("digits", None)
    data = Subset(query, list(range(0, len(query), 8)))
    model = _ensemble().eval()
    session = EvaluationSession(model, data, settings=EvalSettings(kmeans_restarts=1))
    assert session.attack_model is not model and session.attack_model is session.attack_model  # made once
    assert EvaluationSession(model, data, settings=EvalSettings(layout="as-given")).attack_model is model

    class Foreign(nn.Module):  # a model of one's own is attacked as it is
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))

        def forward(self, x):
            return F.normalize(self.body(x), dim=1)
    foreign = Foreign().eval()
    assert EvaluationSession(foreign, data).attack_model is foreign

    session.clean_emb  # the clean state first: not an attack's passes
    crafted, embedded = [], []
    session.attack_model.register_forward_hook(lambda module, inputs, output: crafted.append(len(inputs[0])))
    model.register_forward_hook(lambda module, inputs, output: embedded.append(inputs[0].detach()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack = create_attack("displacement", eps=0.1, steps=3, optimizer="pgd")
    emb, (clean, adv), _ = session.attack(attack, samples=4)
    assert sum(crafted) >= 3 * len(data)  # every step ran on the copy
    # the model itself embedded the attack's images, once each: the figures are its own
    assert sum(len(x) for x in embedded) == len(data) and torch.equal(embedded[0][:4], adv)
    assert (adv - clean).abs().max() <= 0.1 + 1e-6 and float(1 - (emb * session.clean_emb).sum(1).mean()) > 1e-3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_robranks_attacks_craft_on_the_copy_and_the_model_embeds_what_they_made():
    from robustdml.evaluation.ranking import evaluate_ranking
    query, _ = evaluation_sets("digits", None)
    data = Subset(query, list(range(0, len(query), 8)))
    model = _ensemble().eval()
    session = EvaluationSession(model, data, settings=EvalSettings(kmeans_restarts=1))
    session.clean_emb
    crafted, embedded = [], []
    session.attack_model.register_forward_hook(lambda module, inputs, output: crafted.append(len(inputs[0])))
    model.register_forward_hook(lambda module, inputs, output: embedded.append(len(inputs[0])))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = evaluate_ranking(model, profile="rob28", queries=20, attacks=["es"], check_es_start=False,
                              session=session)
    assert sum(crafted) >= 32 * 20  # RobRank's 32 steps, every one on the copy
    assert sum(embedded) == 20  # the model embedded each query's adversarial image once
    assert result.columns["ES:D"] > result.clean_columns["ES:D"] + 1e-3  # the images it made moved the embeddings
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
