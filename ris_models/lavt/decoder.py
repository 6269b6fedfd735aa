"""LAVT's light decoder ("simple decoding"): top-down upsample + concat + two 3x3 convs per level, 2-class head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=False), nn.BatchNorm2d(out_dim), nn.ReLU(inplace=True))


class SimpleDecoder(nn.Module):
    """Features (stride 4, 8, 16, 32) -> logits [B, 2, S/4, S/4]."""

    def __init__(self, channels: Sequence[int], hidden: int, num_classes: int = 2) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        self.fuse3 = nn.Sequential(_conv_bn_relu(c4 + c3, hidden), _conv_bn_relu(hidden, hidden))
        self.fuse2 = nn.Sequential(_conv_bn_relu(hidden + c2, hidden), _conv_bn_relu(hidden, hidden))
        self.fuse1 = nn.Sequential(_conv_bn_relu(hidden + c1, hidden), _conv_bn_relu(hidden, hidden))
        self.classifier = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3, f4 = feats
        x = f4
        for skip, fuse in ((f3, self.fuse3), (f2, self.fuse2), (f1, self.fuse1)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = fuse(torch.cat([x, skip], dim=1))
        return self.classifier(x)
