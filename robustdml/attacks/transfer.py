"""Transfer attack: adversarial examples crafted on a separate surrogate model (with embedding
displacement, which needs nothing from the target), then fed to the target. If it hurts the target
much more than the white-box attacks do, the target's gradients are masked."""

from __future__ import annotations

from .base import Attack
from .displacement import EmbeddingDisplacement
from .registry import register_attack


@register_attack
class TransferAttack(Attack):
    name = "transfer"
    white_box = False
    needs = ("surrogate",)

    def objective(self, embeddings, state):  # pragma: no cover - the inner attack optimises
        raise NotImplementedError

    def perturb(self, model, x, state, context):
        inner = EmbeddingDisplacement(self.eps, self.steps, self.step_size, self.norm, self.random_init,
                                      self.restarts, self.seed, self.optimizer)
        return inner(context.surrogate, x)
