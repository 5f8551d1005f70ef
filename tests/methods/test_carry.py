"""Fast training adversaries: carried perturbations stay in the budget and in [0, 1], follow their
image, accumulate over visits and survive --resume bit-identically; the FGSM-RS preset's step is
1.25·eps; the default adversary is unchanged."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdml.attacks import Norm, ThreatModel, project
from robustdml.engine import config_from_dict, train
from robustdml.engine.checkpoint import load_checkpoint
from robustdml.errors import ConfigError
from robustdml.methods import create_method
from robustdml.methods.adversarial import TrainingAttack
from robustdml.methods.base import TrainingSetup
from robustdml.methods.carry import QUANTA, PerturbationBank

FAST = {"dataset": "digits", "backbone": "small-cnn", "embedding_dim": 16, "epochs": 2, "batch_size": 64,
        "lr": 1e-3, "proxy_lr_mult": 10.0, "robust_eval": False}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))

    def forward(self, x):
        return F.normalize(self.body(x), dim=1)


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_carried_perturbations_stay_in_the_budget_and_in_the_image_range(norm):
    eps = 0.1
    bank = PerturbationBank(10, eps, norm)
    x = torch.rand(4, 1, 8, 8) * 0.6 + 0.2
    x[0] = 1.0  # an image at the top of the range: a carried push upward must be cut
    delta = torch.full_like(x, eps) if norm is Norm.LINF else eps * torch.ones_like(x) / 8
    index = torch.tensor([1, 3, 5, 7])
    bank.start(x, index, torch.zeros_like(x))
    bank.keep(index, delta)
    start = bank.start(x, index, torch.zeros_like(x))
    assert ((x + start) >= 0).all() and ((x + start) <= 1).all()
    if norm is Norm.LINF:
        assert start.abs().max() <= eps + 1e-7
    else:
        assert start.flatten(1).norm(dim=1).max() <= eps + 1e-6
    assert torch.equal(start[0], torch.zeros_like(start[0]))  # x + delta clipped back to 1
    assert (start[1:] - delta[1:]).abs().max() <= eps / QUANTA  # the rest as kept, to a quantum


def test_a_perturbation_follows_its_image_wherever_the_sampler_puts_it():
    bank = PerturbationBank(10, 0.1, Norm.LINF)
    x = torch.full((2, 1, 8, 8), 0.5)
    first, second = torch.full((1, 1, 8, 8), 0.05), torch.full((1, 1, 8, 8), -0.03)
    bank.start(x, torch.tensor([2, 6]), torch.zeros_like(x))
    bank.keep(torch.tensor([2, 6]), torch.cat([first, second]))
    fresh = torch.full_like(x, 0.09)
    swapped = bank.start(x, torch.tensor([6, 2]), fresh)
    assert torch.allclose(swapped[0], second[0], atol=0.1 / QUANTA) and torch.allclose(swapped[1], first[0], atol=0.1 / QUANTA)
    unseen = bank.start(x, torch.tensor([6, 9]), fresh)
    assert torch.equal(unseen[1], fresh[1])  # an image on its first visit starts fresh


def test_carried_steps_accumulate_over_visits():
    """One small step per visit: with carry the perturbation grows visit after visit, from zero it does not."""
    model = Net().eval()
    x = torch.rand(8, 1, 8, 8) * 0.5 + 0.25
    index = torch.arange(8)
    moved = {}
    for init in ("carry", "zero"):
        adversary = TrainingAttack(eps=0.2, steps=1, step_size=0.02, init=init)
        adversary.num_samples = 8
        for _ in range(5):
            out = adversary(model, None, x, None, index)
        moved[init] = float((out - x).abs().mean())
    assert moved["zero"] == pytest.approx(0.02, abs=1e-6)
    assert moved["carry"] > 3 * moved["zero"]


def test_fgsm_rs_preset_is_one_step_of_one_and_a_quarter_eps():
    method = create_method("pgd-at", preset="fgsm-rs")
    method.setup(TrainingSetup(num_samples=10, seed=0, threat=ThreatModel(0.1)))
    attack = method.adversary.attack
    assert attack.steps == 1 and attack.step_size == pytest.approx(0.125) and attack.random_init
    with pytest.raises(ConfigError, match="preset fgsm-rs sets steps"):
        create_method("pgd-at", preset="fgsm-rs", steps=3)
    with pytest.raises(ConfigError, match="init must be one of"):
        create_method("trades", init="sometimes")


def test_the_default_adversary_is_unchanged():
    """init: random is today's adversary: the same adversarial batch for the same random stream."""
    model, x = Net().eval(), torch.rand(6, 1, 8, 8)
    before = TrainingAttack(eps=0.1, steps=3)
    after = TrainingAttack(eps=0.1, steps=3, init="random")
    torch.manual_seed(5)
    a = before(model, None, x, None)
    torch.manual_seed(5)
    b = after(model, None, x, None, torch.arange(6))
    assert torch.equal(a, b) and not after.banks


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_the_free_step_moves_a_carried_perturbation_up_the_updates_gradient(norm):
    """After the update's backward pass, each image's kept perturbation is one more projected step up
    the gradient that pass left on its adversarial image: inside the budget and [0, 1]."""
    model, eps, step = Net().eval(), 0.2, 0.05
    x = torch.rand(8, 1, 8, 8) * 0.6 + 0.2
    x[0] = 1.0  # at the top of the range
    index = torch.tensor([9, 2, 4, 6, 8, 1, 3, 5])
    adversary = TrainingAttack(eps=eps, steps=1, step_size=step, norm=norm.value, init="carry", free_step=True)
    adversary.num_samples = 10
    adversarial = adversary(model, None, x, None, index)
    assert adversarial.requires_grad and adversarial.is_leaf
    model(adversarial)[:, :3].sum().backward()  # a stand-in for the update's loss
    expected = project(x, adversarial.detach() - x, eps, norm)
    direction = adversarial.grad.sign() if norm is Norm.LINF else adversarial.grad / adversarial.grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = project(x, expected + step * direction, eps, norm)
    before = adversarial.detach() - x  # what the visit's own step found
    adversary.after_backward()
    kept = adversary.banks[0].start(x, index, torch.zeros_like(x))
    assert (kept - expected).abs().max() <= eps / QUANTA + 1e-6
    assert (kept - before).flatten(1).norm(dim=1).max() > step / 2  # it did move
    assert ((x + kept) >= 0).all() and ((x + kept) <= 1).all() and not adversary.pending
    if norm is Norm.LINF:
        assert kept.abs().max() <= eps + 1e-7
    else:
        assert kept.flatten(1).norm(dim=1).max() <= eps * (1 + 1e-3)


def test_the_free_step_needs_carried_perturbations_and_eager_passes():
    with pytest.raises(ConfigError, match="needs init: carry"):
        create_method("pgd-at", free_step=True)
    with pytest.raises(ConfigError, match="needs init: carry"):
        create_method("eat", preset="fgsm-rs", free_step=True)
    with pytest.raises(ConfigError, match="free_step must be true or false"):
        create_method("trades", init="carry", free_step="yes")
    assert create_method("pgd-at", init="carry").graphable and create_method("eat").graphable
    assert not create_method("pgd-at", init="carry", free_step=True).graphable
    assert not create_method("eat", init="carry", free_step=True).graphable


def _resumed_and_uninterrupted(base: dict, tmp_path):
    """Checkpoints of 2 epochs trained as 1 + --resume 1, and in one go; their weights must be equal."""
    train(config_from_dict({**base, "epochs": 1}), tmp_path / "a", progress=False)
    train(config_from_dict({**base, "epochs": 2}), tmp_path / "a", resume=True, progress=False)
    train(config_from_dict(base), tmp_path / "b", progress=False)
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    return a, b


@pytest.mark.parametrize("method,options", [
    ("pgd-at", {"init": "carry", "steps": 1}),
    ("pgd-at", {"init": "carry", "steps": 1, "free_step": True}),
    # three members, each carrying its own: with the slow tests (~30 s)
    pytest.param("eat", {"init": "carry", "steps": 1, "transfer": "self"}, marks=pytest.mark.slow),
    # the readings of self-transfer: cross-crafted carried examples, distillation, the GAL penalty
    pytest.param("eat", {"init": "carry", "steps": 1, "transfer": "cross", "distill": 1.0, "diversity": "gal"},
                 marks=pytest.mark.slow)])
def test_resume_with_carried_perturbations_is_bit_identical(method, options, tmp_path):
    base = {**FAST, "method": method, "method_kwargs": options}
    a, b = _resumed_and_uninterrupted(base, tmp_path)
    banks_a, banks_b = a["method"]["adversary"]["banks"], b["method"]["adversary"]["banks"]
    assert set(banks_a) == set(banks_b) == ({0} if method == "pgd-at" else {0, 1, 2})
    for slot in banks_b:
        assert torch.equal(banks_a[slot]["values"], banks_b[slot]["values"])
        seen = banks_b[slot]["seen"].float().mean()
        # two epochs: pgd-at's adversary visited every training image, each EAT member those of its parts
        assert seen == 1 if method == "pgd-at" else 0.5 < seen < 0.85
        assert banks_b[slot]["values"].dtype == torch.int8


def test_ranking_defences_carry_a_perturbation_per_role_within_the_budget():
    """RobRank's adversary with init: carry starts each role's rows (EST's images; ACT's positives
    and negatives) from their last perturbation: one signed step per visit accumulates, inside eps
    and [0, 1]; from the clean images (RobRank's start) it stays one step."""
    from robustdml.methods.ranking_common import RankingAdversary, roles
    model = Net().eval()
    x = torch.rand(8, 1, 8, 8)
    index = torch.arange(8) + 2

    def push(emb):
        return emb.sum(1)

    moved = {}
    for init in ("carry", "zero"):
        adversary = RankingAdversary(eps=0.1, steps=1, step_size=0.02, init=init)
        adversary.num_samples = 12
        for _ in range(8):
            out = adversary(model, x, push, index=roles(index, torch.arange(4), torch.arange(4, 8)))
        assert (out - x).abs().max() <= 0.1 + 1e-6 and out.min() >= 0 and out.max() <= 1
        moved[init] = float((out - x).abs().mean())
        assert set(adversary.banks) == ({0, 1} if init == "carry" else set())
    assert moved["carry"] > 3 * moved["zero"]
    with pytest.raises(ConfigError, match="init must be zero"):
        create_method("est", init="random")


def test_carry_by_image_keeps_one_perturbation_whatever_the_role():
    """With carry_by: image an image perturbed as a positive starts from there when it next comes as
    a negative: one bank, and the steps of both roles accumulate in it (within eps and [0, 1])."""
    from robustdml.methods.ranking_common import RankingAdversary, roles
    model = Net().eval()
    x = torch.rand(8, 1, 8, 8)
    index = torch.arange(8)

    def push(emb):
        return emb.sum(1)

    moved = {}
    for carry_by in ("role", "image"):
        adversary = RankingAdversary(eps=0.2, steps=1, step_size=0.02, init="carry", carry_by=carry_by)
        adversary.num_samples = 8
        for visit in range(6):  # the same images, their roles swapped at every visit
            first, second = (torch.arange(4), torch.arange(4, 8)) if visit % 2 else (torch.arange(4, 8), torch.arange(4))
            rows = torch.cat([first, second])
            out = adversary(model, x[rows], push, index=roles(index, first, second))
        assert (out - x[rows]).abs().max() <= 0.2 + 1e-6 and out.min() >= 0 and out.max() <= 1
        moved[carry_by] = float((out - x[rows]).abs().mean())
        assert set(adversary.banks) == ({0, 1} if carry_by == "role" else {0})
    assert moved["image"] > 1.5 * moved["role"]  # six steps in one bank against three in each of two
    with pytest.raises(ConfigError, match="carry_by must be one of"):
        create_method("act", init="carry", carry_by="batch")
    with pytest.raises(ConfigError, match="needs init: carry"):
        create_method("act", carry_by="image")


@pytest.mark.parametrize("method,roles", [  # act's and hm's several roles with the slow tests
    ("est", {0}), pytest.param("act", {0, 1}, marks=pytest.mark.slow), pytest.param("hm", {0, 1, 2}, marks=pytest.mark.slow)])
def test_ranking_defence_resume_with_carried_perturbations_is_bit_identical(method, roles, tmp_path):
    base = {**FAST, "method": method, "method_kwargs": {"init": "carry", "steps": 1}}
    a, b = _resumed_and_uninterrupted(base, tmp_path)
    banks_a, banks_b = a["method"]["adversary"]["banks"], b["method"]["adversary"]["banks"]
    assert set(banks_a) == set(banks_b) == roles
    for role in banks_b:
        assert torch.equal(banks_a[role]["values"], banks_b[role]["values"])
        assert banks_b[role]["seen"].any()


def test_the_ranking_defences_free_step_moves_each_role_up_the_updates_gradient():
    """RobRank's adversary with free_step returns its rows as a leaf; after the update's backward
    pass each role's kept perturbation is one more signed step up the gradient left on its rows,
    inside eps and [0, 1], and kept in that role's bank."""
    from robustdml.methods.ranking_common import RankingAdversary, roles
    model, eps, step = Net().eval(), 0.2, 0.05
    x = torch.rand(8, 1, 8, 8) * 0.6 + 0.2
    x[0] = 1.0  # at the top of the range
    index = torch.tensor([9, 2, 4, 6, 8, 1, 3, 5])
    positives, negatives = torch.arange(4), torch.arange(4, 8)
    adversary = RankingAdversary(eps=eps, steps=1, step_size=step, init="carry", free_step=True)
    adversary.num_samples = 10
    adversarial = adversary(model, x, lambda emb: emb.sum(1), index=roles(index, positives, negatives))
    assert adversarial.requires_grad and adversarial.is_leaf and not adversary.banks[0].seen.any()
    model(adversarial)[:, :3].sum().backward()  # a stand-in for the update's loss
    before = adversarial.detach() - x  # what the visit's own step found
    expected = project(x, before + step * adversarial.grad.sign(), eps, Norm.LINF)
    adversary.after_backward()
    assert not adversary.pending
    for role, rows in enumerate((positives, negatives)):
        kept = adversary.banks[role].start(x[rows], index[rows], torch.zeros_like(x[rows]))
        assert (kept - expected[rows]).abs().max() <= eps / QUANTA + 1e-6
        assert (kept - before[rows]).abs().amax(dim=(1, 2, 3)).min() > step / 2  # every row moved
        assert ((x[rows] + kept) >= 0).all() and ((x[rows] + kept) <= 1).all() and kept.abs().max() <= eps + 1e-7


def test_the_ranking_defences_free_step_needs_carried_perturbations_and_eager_passes():
    for method in ("est", "act", "hm"):
        with pytest.raises(ConfigError, match="needs init: carry"):
            create_method(method, free_step=True)
        with pytest.raises(ConfigError, match="free_step must be true or false"):
            create_method(method, init="carry", free_step=1)
        assert create_method(method, init="carry").graphable
        assert not create_method(method, init="carry", free_step=True).graphable


@pytest.mark.parametrize("method", ["act", pytest.param("hm", marks=pytest.mark.slow)])
def test_ranking_defence_free_step_trains_and_resumes_bit_identically(method, tmp_path):
    """The free step through the trainer (its after_backward hook): the banks move past what the
    visits' own steps give and --resume repeats the run exactly."""
    base = {**FAST, "method": method, "method_kwargs": {"init": "carry", "steps": 1, "free_step": True}}
    a, b = _resumed_and_uninterrupted(base, tmp_path)
    plain = {**base, "method_kwargs": {"init": "carry", "steps": 1}}
    train(config_from_dict(plain), tmp_path / "c", progress=False)
    c = load_checkpoint(tmp_path / "c" / "checkpoint.pt")
    banks_a, banks_b, banks_c = (ck["method"]["adversary"]["banks"] for ck in (a, b, c))
    assert set(banks_a) == set(banks_b) == set(banks_c)
    for role in banks_b:
        assert torch.equal(banks_a[role]["values"], banks_b[role]["values"])
        assert not torch.equal(banks_b[role]["values"], banks_c[role]["values"])
