"""The embedding network: input normalisation, backbone, global average + max pooling, a linear
layer to D, L2 normalisation. It maps [0, 1] images (B, C, H, W) to unit embeddings (B, D)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .backbones import backbone_builder


class Normalize(nn.Module):
    """(x - mean) / std per channel, optionally after RGB -> BGR (for Caffe-trained backbones).

    Living inside the model lets every attack work in [0, 1] pixel space."""

    def __init__(self, mean, std, bgr: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.bgr = bgr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        return (x - self.mean) / self.std


@dataclass
class ModelSpec:
    """Everything needed to rebuild an embedding network (saved as JSON beside its weights)."""

    backbone: str = "small-cnn"
    embedding_dim: int = 512
    in_channels: int = 3
    mean: list[float] | None = None
    std: list[float] | None = None
    freeze_bn: bool = False
    backbone_kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class EmbeddingNet(nn.Module):
    """Normalise -> backbone -> (GAP + GMP, unless the backbone is flat) -> Linear(F, D) -> L2 normalise.

    Example:
        >>> net = create_model("small-cnn", embedding_dim=64, in_channels=1, pretrained=False)
        >>> net(torch.rand(8, 1, 8, 8)).shape  # torch.Size([8, 64])
    """

    def __init__(self, spec: ModelSpec, pretrained: bool | str = False):
        super().__init__()
        builder = backbone_builder(spec.backbone)
        if spec.embedding_dim < 1:
            raise ConfigError(f"embedding_dim must be at least 1, got {spec.embedding_dim}")
        bb = builder(pretrained=pretrained, in_channels=spec.in_channels, **spec.backbone_kwargs)
        mean = spec.mean if spec.mean is not None else list(bb.mean)
        std = spec.std if spec.std is not None else list(bb.std)
        # the normalisation is saved with the model, so a rebuilt model needs nothing else to match
        self.spec = spec = replace(spec, mean=[float(m) for m in mean], std=[float(s) for s in std])
        if len(mean) != spec.in_channels or len(std) != spec.in_channels:
            raise ConfigError(f"mean and std need {spec.in_channels} values, one per input channel")
        self.normalize = Normalize(mean, std, bgr=bb.caffe_input)
        self.backbone = bb.module
        self.flat = bb.flat
        self.embedding = nn.Linear(bb.out_features, spec.embedding_dim)
        if bb.head_init == "kaiming":
            nn.init.kaiming_normal_(self.embedding.weight, mode="fan_out")
            nn.init.zeros_(self.embedding.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(self.normalize(x))
        if self.flat:
            return f
        return F.adaptive_avg_pool2d(f, 1).flatten(1) + F.adaptive_max_pool2d(f, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedding(self.features(x)), dim=1)

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters trained during warm-up epochs (the backbone is frozen then)."""
        return list(self.embedding.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.spec.freeze_bn:
            # Frozen BatchNorm, as in the Proxy Anchor recipe: running statistics stay ImageNet's.
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


class EnsembleNet(nn.Module):
    """N embedding networks used as one: the L2-normalised mean (``combine="mean"``) or the
    L2-normalised concatenation (``"concat"``) of the members' unit embeddings. Gradients flow
    through every member, so an attack on the ensemble attacks the whole system."""

    COMBINES = ("mean", "concat")

    def __init__(self, members: list[EmbeddingNet], combine: str = "mean"):
        super().__init__()
        if combine not in self.COMBINES:
            raise ConfigError(f"unknown combine '{combine}'; choose from {', '.join(self.COMBINES)}")
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.combine = combine

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.members for p in m.head_parameters()]

    def stacked(self, x: torch.Tensor) -> torch.Tensor:
        """The members' embeddings, (N, B, D)."""
        return torch.stack([m(x) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.stacked(x)
        joined = outs.mean(0) if self.combine == "mean" else outs.permute(1, 0, 2).reshape(x.shape[0], -1)
        return F.normalize(joined, dim=1)
