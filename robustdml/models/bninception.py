"""BN-Inception (Ioffe & Szegedy, "Batch Normalization", arXiv 1502.03167), the classic deep metric
learning backbone, with the layer names of the widely shared Caffe-converted ImageNet weights so a
user-supplied weight file loads as is. It expects BGR input in [0, 255] minus the Caffe mean; the
embedding network's input normalisation does that conversion.
"""

from __future__ import annotations

import torch
from torch import nn

# (name, in, 1x1, 3x3 reduce, 3x3, double reduce, double 3x3, pool kind, pool proj, stride)
# 1x1 = 0 and pool proj = 0 mark the stride-2 blocks, whose pool branch passes through.
BLOCKS = [
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 320, 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 608, 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),
]


class BNInception(nn.Module):
    """BN-Inception feature extractor: (B, 3, H, W) -> (B, 1024, H/32, W/32)."""

    out_channels = 1024

    def __init__(self):
        super().__init__()
        self._conv("conv1_7x7_s2", 3, 64, 7, 2, 3)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self._conv("conv2_3x3_reduce", 64, 64, 1)
        self._conv("conv2_3x3", 64, 192, 3, 1, 1)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        for name, cin, c1, c3r, c3, cdr, cd, pool, proj, stride in BLOCKS:
            p = f"inception_{name}_"
            if c1:
                self._conv(p + "1x1", cin, c1, 1)
            self._conv(p + "3x3_reduce", cin, c3r, 1)
            self._conv(p + "3x3", c3r, c3, 3, stride, 1)
            self._conv(p + "double_3x3_reduce", cin, cdr, 1)
            self._conv(p + "double_3x3_1", cdr, cd, 3, 1, 1)
            self._conv(p + "double_3x3_2", cd, cd, 3, stride, 1)
            if pool == "avg":
                setattr(self, p + "pool", nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=True))
            else:
                setattr(self, p + "pool", nn.MaxPool2d(3, stride, 1 if stride == 1 else 0, ceil_mode=True))
            if proj:
                self._conv(p + "pool_proj", cin, proj, 1)

    def _conv(self, name: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, k, stride, pad))
        setattr(self, name + "_bn", nn.BatchNorm2d(cout))

    def _cbr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(getattr(self, name + "_bn")(getattr(self, name)(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1_3x3_s2(self._cbr("conv1_7x7_s2", x))
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = self.pool2_3x3_s2(x)
        for name, _, c1, _, _, _, _, _, proj, _ in BLOCKS:
            p = f"inception_{name}_"
            branches = [] if not c1 else [self._cbr(p + "1x1", x)]
            branches.append(self._cbr(p + "3x3", self._cbr(p + "3x3_reduce", x)))
            d = self._cbr(p + "double_3x3_reduce", x)
            branches.append(self._cbr(p + "double_3x3_2", self._cbr(p + "double_3x3_1", d)))
            pooled = getattr(self, p + "pool")(x)
            branches.append(self._cbr(p + "pool_proj", pooled) if proj else pooled)
            x = torch.cat(branches, 1)
        return x


def load_bninception_weights(module: BNInception, state: dict[str, torch.Tensor]) -> None:
    """Load the Caffe-converted weights; some of them carry a leading singleton dimension."""
    own = module.state_dict()
    fixed = {k: (v.reshape(own[k].shape) if k in own and v.numel() == own[k].numel() else v)
             for k, v in state.items() if not k.startswith("last_linear")}
    module.load_state_dict(fixed, strict=False)
