"""CRIS's multi-modal FPN neck: fuses C3/C4/C5 with the sentence feature into one stride-16 map.

The sentence feature gates C5 multiplicatively (CRIS Sec. 3.2: F_m5 = phi(F_v5) * phi(F_s)), C5 is propagated
top-down into C4, C3 is pooled down to stride 16, the three levels are concatenated, aggregated and given
explicit coordinates (CoordConv) before the transformer decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_dim: int, out_dim: int, kernel_size: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_dim),
        nn.ReLU(inplace=True),
    )


def add_coords(x: torch.Tensor) -> torch.Tensor:
    """Append normalised x and y coordinate channels in [-1, 1]."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([gx, gy]).unsqueeze(0).expand(b, -1, -1, -1)
    return torch.cat([x, coords], dim=1)


class CoordConv(nn.Module):
    """Conv-BN-ReLU over the input with two coordinate channels appended."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_dim + 2, out_dim, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(add_coords(x))


class TextGatedFPN(nn.Module):
    """in_channels = (C3, C4, C5=sentence dim), out_channels = (o3, o4=vis_dim, o5); output [B, o4, S/16, S/16]."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        o3, o4, o5 = out_channels
        self.sentence_proj = nn.Sequential(nn.Linear(c5, o5, bias=False), nn.BatchNorm1d(o5), nn.ReLU(inplace=True))
        self.v5_proj = conv_bn_relu(c5, o5, 1)
        self.gate_norm = nn.Sequential(nn.BatchNorm2d(o5), nn.ReLU(inplace=True))
        self.v4_proj = conv_bn_relu(c4, o4, 3)
        self.merge4 = conv_bn_relu(o5 + o4, o4, 1)
        self.v3_proj = conv_bn_relu(c3, o3, 3)
        self.merge3 = conv_bn_relu(o3 + o4, o4, 1)
        self.out5 = conv_bn_relu(o5, o4, 3)
        self.out4 = conv_bn_relu(o4, o4, 3)
        self.out3 = conv_bn_relu(o4, o4, 3)
        self.aggregate = conv_bn_relu(3 * o4, o4, 1)
        self.coord = nn.Sequential(CoordConv(o4, o4, 3), conv_bn_relu(o4, o4, 3))

    def forward(self, feats: Sequence[torch.Tensor], sentence: torch.Tensor) -> torch.Tensor:
        v3, v4, v5 = feats
        gate = self.sentence_proj(sentence)[:, :, None, None]
        f5 = self.gate_norm(self.v5_proj(v5) * gate)  # stride 32, language-gated
        f4 = self.merge4(torch.cat([self.v4_proj(v4), _resize(f5, v4)], dim=1))  # stride 16
        f3 = F.avg_pool2d(self.v3_proj(v3), 2, 2)  # stride 8 -> 16
        f3 = self.merge3(torch.cat([_resize(f3, f4), f4], dim=1))
        q5 = _resize(self.out5(f5), f4)
        fused = self.aggregate(torch.cat([self.out3(f3), self.out4(f4), q5], dim=1))
        return self.coord(fused)


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize to ``like``'s spatial size (robust to odd sizes, unlike a fixed scale factor)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
