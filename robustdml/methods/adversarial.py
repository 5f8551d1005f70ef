"""Defences adapted from classification: PGD adversarial training and TRADES.

- ``pgd-at``: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
  arXiv 1706.06083 — train on PGD examples only.
- ``trades``: Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
  arXiv 1901.08573 — clean loss + β · divergence(clean, adversarial), the adversary maximising the
  divergence. For embeddings the divergence is the cosine distance 1 - cos(f(x'), f(x)) (ours).
"""

from __future__ import annotations

import torch

from ..attacks import (AttackContext, EmbeddingDisplacement, LossAttack, Norm, ThreatModel, check_eps, parse_eps,
                       random_start)
from ..errors import ConfigError
from .base import TrainingMethod, TrainingSetup, register_method
from .carry import PerturbationBank, free_step_option, stepped_on

OBJECTIVES = ("displacement", "loss")
INITS = ("random", "zero", "carry")
#: named adversary settings: FGSM with a random start and a step of 1.25·eps ("Fast is better than
#: free", Wong, Rice & Kolter, arXiv 2001.03994)
PRESETS = {"fgsm-rs": {"steps": 1, "init": "random", "step_factor": 1.25}}


class TrainingAttack:
    """The attack used inside training: eps and norm (default: the dataset's threat model, given by
    :meth:`bind`), steps, step size (default eps/4: 2/255 for 8/255, and 2.5·eps/steps at 10 steps),
    objective (embedding displacement or the training loss).

    ``init``: where each batch's steps start — ``random`` (a random point of the ball, the default),
    ``zero`` (the clean image) or ``carry`` (the perturbation the image's last adversary found,
    :class:`~robustdml.methods.carry.PerturbationBank`; a random start at an image's first visit).
    ``preset``: ``fgsm-rs``, one step from a random start with step 1.25·eps (it sets steps,
    init and the step; combine it with none of them).
    ``free_step``: with ``init: carry``, one more step of every carried perturbation after each
    update, up the training loss's input gradient that the update's backward pass computes anyway
    (gradient reuse: Shafahi et al., "Adversarial Training for Free!", arXiv 1904.12843): the
    next visit starts one step further on, for the price of one input gradient in the update."""

    def __init__(self, eps: float | None = None, steps: int = 10, step_size: float | None = None,
                 objective: str = "displacement", norm: str | None = None, init: str = "random",
                 preset: str | None = None, free_step: bool = False):
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, not '{objective}'")
        if init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, not '{init}'")
        self.step_factor = 0.25  # the default step, as a fraction of eps
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, not '{preset}'")
            if steps != 10 or step_size is not None or init != "random":
                raise ConfigError(f"preset {preset} sets steps, init and the step itself: drop steps, step_size and init")
            steps, init, self.step_factor = (PRESETS[preset][k] for k in ("steps", "init", "step_factor"))
        self.init, self.preset, self.free_step = init, preset, free_step_option(free_step, init)
        # the batch's adversarial leaves whose gradients the update fills, by slot (free_step)
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.banks: dict[int, PerturbationBank] = {}
        self.num_samples: int | None = None
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be a whole number >= 1, got {steps!r}")
        if norm is not None and norm not in {n.value for n in Norm}:
            raise ConfigError(f"norm must be one of {', '.join(n.value for n in Norm)}, not {norm!r}")
        eps = None if eps is None else check_eps(parse_eps(eps), norm or Norm.LINF)
        step_size = None if step_size is None else parse_eps(step_size, "step_size")
        self.objective, self.eps, self.steps, self.step_size, self.norm = objective, eps, steps, step_size, norm
        self.attack, self.bound_eps = None, None
        if eps is not None:
            self.bind(ThreatModel(eps, Norm(norm or Norm.LINF)))

    def bind(self, threat: ThreatModel) -> None:
        """Fill the budget the method's options leave open from the dataset's threat model."""
        eps = self.eps if self.eps is not None else threat.eps
        norm = self.norm or threat.norm
        cls = EmbeddingDisplacement if self.objective == "displacement" else LossAttack
        step = self.step_size if self.step_size is not None else max(eps, 1e-12) * self.step_factor
        self.attack = (cls(eps, steps=self.steps, step_size=step, norm=norm, random_init=self.init != "zero")
                       if eps > 0 else None)
        self.bound_eps = eps

    def __call__(self, model, criterion, images, labels, index: torch.Tensor | None = None, slot: int = 0):
        """The adversarial batch; ``index`` (the images' training-set positions) is needed to carry
        perturbations, ``slot`` keeps one bank per adversary of a method (an ensemble's members)."""
        if self.attack is None:
            if self.bound_eps is None:
                raise RuntimeError("the training attack has no eps: pass eps or call the method's setup() first")
            return images
        # a fresh random start per batch, drawn from the global generator so that a resumed run
        # (whose RNG state is checkpointed) repeats it exactly
        self.attack.seed = int(torch.randint(2**31 - 1, (1,)))
        context = AttackContext(criterion=criterion, labels=labels)
        if self.init != "carry":
            return self.attack(model, images, context)
        if index is None or self.num_samples is None:
            raise RuntimeError("carried perturbations need the images' training-set index and the method's setup()")
        bank = PerturbationBank.kept_in(self.banks, slot, self.num_samples, self.bound_eps, self.attack.norm)
        fresh = random_start(images, self.bound_eps, self.attack.norm,
                             torch.Generator(device=images.device).manual_seed(self.attack.seed))
        context.start = bank.start(images, index, fresh)
        adversarial = self.attack(model, images, context)
        if not self.free_step:
            bank.keep(index, adversarial - images)
            return adversarial
        # kept by after_backward, one step further on: a leaf, so that the update's backward pass
        # leaves its gradient in .grad
        adversarial = adversarial.detach().requires_grad_(True)
        self.pending[slot] = (adversarial, images.detach(), index)
        return adversarial

    def after_backward(self) -> None:
        """The free step: each carried perturbation of the batch moves once more, up the gradient the
        update's backward pass left on its adversarial image, and is kept for the image's next visit."""
        for slot, (adversarial, images, index) in self.pending.items():
            self.banks[slot].keep(index, stepped_on(adversarial, images, self.bound_eps, self.attack.norm,
                                                    self.attack.step_size))
        self.pending.clear()

    def state_dict(self) -> dict:
        return {"banks": {slot: bank.state_dict() for slot, bank in self.banks.items()}} if self.banks else {}

    def load_state_dict(self, state: dict) -> None:
        for slot, bank_state in state.get("banks", {}).items():
            bank = PerturbationBank(self.num_samples, bank_state["eps"], self.attack.norm)
            bank.load_state_dict(bank_state)
            self.banks[int(slot)] = bank


class AdversarialMethod(TrainingMethod):
    """A method with a training adversary in ``self.adversary``, bound to the dataset's threat model."""

    adversary: TrainingAttack

    @property
    def graphable(self) -> bool:
        """Graphed passes cannot give the update's input gradient that the free step reuses."""
        return not self.adversary.free_step

    def setup(self, run: TrainingSetup) -> None:
        if self.adversary.eps is None:  # an eps in the method's options wins over the dataset's
            self.adversary.bind(run.threat)
        self.adversary.num_samples = run.num_samples

    def after_backward(self) -> None:
        if self.adversary.free_step:
            self.adversary.after_backward()

    def state_dict(self) -> dict:
        """The carried perturbations, where the adversary carries them."""
        own = self.adversary.state_dict()
        return {"adversary": own} if own else {}

    def load_state_dict(self, state: dict) -> None:
        self.adversary.load_state_dict(state.get("adversary", {}))


@register_method
class PGDAT(AdversarialMethod):
    """Train on PGD adversarial examples: ``criterion(model(x_adv), y)``. eps = 0 is standard training."""

    name = "pgd-at"

    def __init__(self, eps: float | None = None, steps: int = 10, step_size: float | None = None,
                 objective: str = "displacement", norm: str | None = None, init: str = "random",
                 preset: str | None = None, free_step: bool = False):
        self.adversary = TrainingAttack(eps, steps, step_size, objective, norm, init, preset, free_step)

    def loss(self, model, criterion, images, labels, index):
        return criterion(model(self.adversary(model, criterion, images, labels, index)), labels)


@register_method
class TRADES(AdversarialMethod):
    """``criterion(f(x), y) + beta * mean(1 - cos(f(x_adv), f(x)))``; beta = 0 is standard training."""

    name = "trades"

    def __init__(self, beta: float = 6.0, eps: float | None = None, steps: int = 10, step_size: float | None = None,
                 norm: str | None = None, init: str = "random", preset: str | None = None, free_step: bool = False):
        if beta < 0:
            raise ConfigError(f"beta must be >= 0, got {beta}")
        self.beta = beta
        self.adversary = TrainingAttack(eps, steps, step_size, "displacement", norm, init, preset, free_step)

    def loss(self, model, criterion, images, labels, index):
        clean = model(images)
        loss = criterion(clean, labels)
        if self.beta == 0:
            return loss
        adversarial = model(self.adversary(model, criterion, images, labels, index))
        return loss + self.beta * (1 - (adversarial * clean).sum(1)).mean()
