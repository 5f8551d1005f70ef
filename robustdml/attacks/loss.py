"""The training loss itself as the adversary's objective (Madry-style adversarial training on the
metric-learning loss). Used inside training, not part of the evaluation suite: it needs the
training labels and the loss's proxies."""

from __future__ import annotations

from .base import Attack


class LossAttack(Attack):
    name = "loss"
    needs = ("criterion", "labels")

    def prepare(self, model, x, context):
        return {"criterion": context.criterion, "labels": context.labels}

    def objective(self, embeddings, state):
        loss = state["criterion"](embeddings, state["labels"])
        # spread the batch loss over samples so that .sum() in the PGD loop is the loss itself
        return loss.expand(len(embeddings)) / len(embeddings)
