"""A toy attack: one signed-gradient step of embedding displacement, with an option of its own."""

from robustdml.attacks import Attack, register_attack


@register_attack
class OneStep(Attack):
    name = "toy-one-step"

    def __init__(self, eps: float, scale: float = 1.0, **options):
        super().__init__(eps, **{**options, "steps": 1, "random_init": False})
        self.step_size = scale * self.eps  # the option decides how far the single step goes

    def prepare(self, model, x, context):
        return {"clean": model(x)}

    def objective(self, embeddings, state):
        return 1 - (embeddings * state["clean"]).sum(1)
