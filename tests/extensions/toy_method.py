"""A toy training method with the hooks: a trainable input gain (its own optimiser group), a
per-epoch noise schedule, and state that must survive --resume."""

import torch
from torch import nn

from robustdml.methods import TrainingMethod, register_method


@register_method
class NoisyGain(TrainingMethod):
    name = "toy-noisy-gain"

    def __init__(self, noise: float = 0.05, lr_mult: float = 2.0):
        self.noise, self.lr_mult = noise, lr_mult
        self.gain = nn.Parameter(torch.ones(()))
        self.epochs_started = 0

    def param_groups(self, lr):
        return [{"params": [self.gain], "lr": lr * self.lr_mult}]

    def on_epoch_start(self, epoch):
        self.epochs_started += 1
        self.current_noise = self.noise / (1 + epoch)

    def state_dict(self):
        return {"gain": self.gain.detach().clone(), "epochs_started": self.epochs_started}

    def load_state_dict(self, state):
        if state:
            self.gain.data.copy_(state["gain"])
            self.epochs_started = state["epochs_started"]

    def loss(self, model, criterion, images, labels, index):
        noisy = (images + self.current_noise * torch.randn_like(images)).clamp(0, 1)
        gain = self.gain.to(images.device)
        return criterion(model(noisy) * gain / gain.detach(), labels) + (gain - 1) ** 2
