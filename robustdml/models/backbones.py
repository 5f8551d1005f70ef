"""Backbone registry: each entry builds a feature extractor (B, C, H, W) -> (B, F, h, w) and says how
its input is normalised. ``pretrained`` is False, True (ImageNet weights from the local torch cache)
or a path to a weight file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from ..errors import ConfigError, ModelFileError
from ..registry import Registry
from .bninception import BNInception, load_bninception_weights

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    module: nn.Module
    out_features: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    caffe_input: bool = False  # BGR, [0, 255]: the Caffe-trained BN-Inception's input space
    flat: bool = False  # the module already returns (B, F) features: no global pooling
    head_init: str = "kaiming"  # the embedding layer's init: "kaiming" (normal, fan-out) or "default" (PyTorch's)


BACKBONES: Registry = Registry("backbone")


def register_backbone(name: str):
    """Decorator registering a function ``(pretrained, in_channels, **options) -> Backbone`` as ``name``."""
    return BACKBONES.register(name=name)


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or .pth file, never unpickling arbitrary objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"weight file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse is the file's fault
        raise ModelFileError(f"cannot read weight file {path}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelFileError(f"weight file {path} does not hold a state dict")
    return state


def _torchvision_resnet(name: str, pretrained: bool | str) -> nn.Module:
    builder = getattr(torchvision.models, name)
    net = builder(weights=None)
    if pretrained is True:
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file():
            raise ConfigError(
                f"ImageNet weights for {name} are not in the local torch cache ({cached}); put the file "
                f"{Path(weights.url).name} there, pass pretrained=PATH to a weight file, or pretrained=false")
        net.load_state_dict(read_weight_file(cached))
    elif pretrained:
        net.load_state_dict(read_weight_file(pretrained))
    return nn.Sequential(*list(net.children())[:-2])  # drop global pooling and the classifier


@register_backbone("resnet18")
def resnet18(pretrained: bool | str = True, in_channels: int = 3) -> Backbone:
    return Backbone(_torchvision_resnet("resnet18", pretrained), 512, IMAGENET_MEAN, IMAGENET_STD)


@register_backbone("resnet50")
def resnet50(pretrained: bool | str = True, in_channels: int = 3) -> Backbone:
    return Backbone(_torchvision_resnet("resnet50", pretrained), 2048, IMAGENET_MEAN, IMAGENET_STD)


@register_backbone("bn-inception")
def bn_inception(pretrained: bool | str = True, in_channels: int = 3) -> Backbone:
    net = BNInception()
    if pretrained is True:
        raise ConfigError("bn-inception has no bundled weights: pass pretrained=PATH to the Caffe-converted "
                          "ImageNet weight file (bn_inception-52deb4733.pth), or pretrained=false")
    if pretrained:
        load_bninception_weights(net, read_weight_file(pretrained))
    return Backbone(net, BNInception.out_channels, (104 / 255, 117 / 255, 128 / 255), (1 / 255,) * 3, caffe_input=True)


@register_backbone("small-cnn")
def small_cnn(pretrained: bool | str = False, in_channels: int = 1, width: int = 32) -> Backbone:
    """Three conv-BN-ReLU layers for the 8x8 digits: (B, 1, 8, 8) -> (B, 4w, 4, 4)."""
    if pretrained:
        raise ConfigError("small-cnn has no pretrained weights; set pretrained=false")

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    net = nn.Sequential(*block(in_channels, width), *block(width, 2 * width), nn.MaxPool2d(2),
                        *block(2 * width, 4 * width))
    return Backbone(net, 4 * width, (0.3,) * in_channels, (0.4,) * in_channels)


class _PoolTo(nn.AdaptiveAvgPool2d):
    """Average-pools a feature map to ``output_size`` squared; a map of that size passes untouched (the
    pooling would only copy it, and its gradient in the backward pass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-2:] == (self.output_size, self.output_size) else super().forward(x)


@register_backbone("c2f2")
def c2f2(pretrained: bool | str = False, in_channels: int = 1) -> Backbone:
    """RobRank's 28x28 ranking network up to its last hidden layer: conv 5x5 32 -> ReLU -> max-pool ->
    conv 5x5 64 -> ReLU -> max-pool -> FC 1024 -> ReLU, (B, C, 28, 28) -> (B, 1024) (other sizes: the
    7x7 map is average-pooled from the larger one); the embedding
    layer (FC D, D = 512 in RobRank) is the network's head, initialised as RobRank's (PyTorch's default).
    No normalisation of the input."""
    if pretrained:
        raise ConfigError("c2f2 has no pretrained weights; set pretrained=false")
    # Max-pool runs before ReLU: the two commute exactly (values, gradients and ties alike, as ReLU is
    # monotone), and ReLU then touches a quarter of the elements: ~10% less time a step on 2 CPU cores
    # (bench/ranking_speed.py, R2).
    net = nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        _PoolTo(7), nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(inplace=True))
    return Backbone(net, 1024, (0.0,) * in_channels, (1.0,) * in_channels, flat=True, head_init="default")


TIMM_PREFIX = "timm/"


def is_backbone(name: str) -> bool:
    """A registered backbone, or ``timm/<model name>`` for any model timm knows."""
    if name.startswith(TIMM_PREFIX):
        import timm
        return timm.is_model(name[len(TIMM_PREFIX):])
    return name in BACKBONES


def backbone_builder(name: str):
    """The builder ``(pretrained, in_channels, **options) -> Backbone`` of a backbone name."""
    if name.startswith(TIMM_PREFIX):
        if not is_backbone(name):
            raise ConfigError(f"timm has no model '{name[len(TIMM_PREFIX):]}' (timm.list_models() lists them)")
        return lambda pretrained=False, in_channels=3, **options: timm_backbone(
            name[len(TIMM_PREFIX):], pretrained, in_channels, **options)
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'; choose from {', '.join(BACKBONES)} or timm/<model name>")
    return BACKBONES[name]


class TimmFeatures(nn.Module):
    """A timm model (built with ``num_classes=0``) as a feature extractor: CNNs' (B, C, h, w) maps are
    globally average- plus max-pooled (as for our ResNets); other models (transformers) give their
    own pre-logits feature (the CLS token or their pooled tokens, as the model's config says)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.forward_features(x)
        if f.dim() == 4 and f.shape[1] == self.net.num_features:
            return f.mean((2, 3)) + f.amax((2, 3))
        return self.net.forward_head(f, pre_logits=True)


def _timm_cached_weights(net: nn.Module, name: str) -> Path:
    """The local file of a timm model's pretrained weights (Hugging Face cache or torch hub cache);
    nothing is downloaded."""
    cfg = net.pretrained_cfg or {}
    places = []
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache
        repo = cfg["hf_hub_id"]
        for filename in ("model.safetensors", "pytorch_model.bin", cfg.get("hf_hub_filename")):
            if filename:
                found = try_to_load_from_cache(repo, filename)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
        places.append(f"the Hugging Face cache (repo {repo}, e.g. `huggingface-cli download {repo}` where there is network)")
    if cfg.get("url"):
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg["url"]).name
        if cached.is_file():
            return cached
        places.append(f"{cached}")
    where = " or ".join(places) or "no download location is known for it"
    raise ConfigError(f"pretrained weights for timm/{name} are not on this machine ({where}); "
                      f"pass pretrained=PATH to a weight file, or pretrained=false")


def _load_timm_state(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a full-model state dict into a classifier-less timm model: the classifier's keys are
    dropped, every other key must match."""
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("head.", "fc.", "classifier.", "head_dist."))}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    problems = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected] + shapes
    if problems:
        raise ModelFileError(f"{source} does not fit this timm model: {'; '.join(problems[:3])}"
                             + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""))
    net.load_state_dict(state)


def timm_backbone(name: str, pretrained: bool | str = False, in_channels: int = 3, **options) -> Backbone:
    """Any timm model by name, e.g. ``vit_small_patch16_224.dino``, ``resnet50.a1_in1k``;
    ``options`` go to ``timm.create_model`` (e.g. ``img_size``). Input normalisation is the
    pretrained config's mean and std."""
    import timm

    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels, **options)
    except TypeError as e:
        raise ConfigError(f"bad backbone_kwargs for timm/{name}: {e}") from None
    if pretrained is True:
        path = _timm_cached_weights(net, name)
        _load_timm_state(net, read_weight_file(path), str(path))
    elif pretrained:
        _load_timm_state(net, read_weight_file(pretrained), str(pretrained))
    cfg = net.pretrained_cfg or {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    if len(mean) != in_channels:
        mean, std = (float(np.mean(mean)),) * in_channels, (float(np.mean(std)),) * in_channels
    return Backbone(TimmFeatures(net), net.num_features, mean, std, flat=True)
