"""Models: backbones, the embedding head, input normalisation, ensembles; create, save and load.

>>> from robustdml.models import create_model
>>> net = create_model("resnet50", embedding_dim=512, pretrained=False)
"""

from __future__ import annotations

from .backbones import BACKBONES, is_backbone, register_backbone
from .embedding import EmbeddingNet, EnsembleNet, ModelSpec, Normalize
from .exported import ExportedModel
from .io import load_model, model_info, save_model


def create_model(name: str, pretrained: bool | str = False, **kwargs) -> EmbeddingNet:
    """Build an embedding network on backbone ``name`` (see ``BACKBONES``); ``kwargs`` are
    ``ModelSpec`` fields (embedding_dim, in_channels, mean, std, freeze_bn, backbone_kwargs)."""
    if "in_channels" not in kwargs:
        kwargs["in_channels"] = 1 if name == "small-cnn" else 3
    return EmbeddingNet(ModelSpec(backbone=name, **kwargs), pretrained=pretrained)


__all__ = ["BACKBONES", "is_backbone", "register_backbone", "EmbeddingNet", "EnsembleNet", "ModelSpec", "Normalize",
           "ExportedModel", "create_model", "load_model", "model_info", "save_model"]
