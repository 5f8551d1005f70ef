"""Embedding displacement: push each embedding away from its clean self, 1 - cos(f(x+δ), f(x)).
Needs no labels and no clustering."""

from __future__ import annotations

from .base import Attack
from .registry import register_attack


@register_attack
class EmbeddingDisplacement(Attack):
    name = "displacement"

    def prepare(self, model, x, context):
        return {"clean": model(x)}

    def objective(self, embeddings, state):
        return 1 - (embeddings * state["clean"]).sum(1)
