"""LAVT's language fusion inside the encoder (Yang et al., "LAVT: Language-Aware Vision Transformer", CVPR 2022).

Pixel-word attention module (PWAM, LAVT Sec. 3.2): every pixel attends over the words (keys/values from the word
features, padding masked), the attended language feature is multiplied element-wise with a projection of the
pixel feature and projected again. Language gate (LAVT Sec. 3.3): a per-channel tanh gate decides how much of
the PWAM output is added back to the visual stream before the next Swin stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn


class PixelWordAttention(nn.Module):
    """Cross-attention from pixels [B,N,C] to words [B,L,D]; returns the per-pixel language feature [B,N,C]."""

    def __init__(self, vis_dim: int, lang_dim: int, num_heads: int = 1) -> None:
        super().__init__()
        if vis_dim % num_heads:
            raise ValueError(f"vis_dim {vis_dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(vis_dim, vis_dim)
        self.query_norm = nn.InstanceNorm1d(vis_dim)  # normalises each channel over the pixels
        self.key = nn.Linear(lang_dim, vis_dim)
        self.value = nn.Linear(lang_dim, vis_dim)
        self.out = nn.Linear(vis_dim, vis_dim)
        self.out_norm = nn.InstanceNorm1d(vis_dim)

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q = self.query_norm(self.query(x).transpose(1, 2)).transpose(1, 2)
        keep = word_mask.to(x.dtype)[:, :, None]  # [B,L,1]
        k = self.key(words) * keep
        v = self.value(words) * keep
        q = q.reshape(b, n, h, c // h).transpose(1, 2)
        k = k.reshape(b, -1, h, c // h).transpose(1, 2)
        v = v.reshape(b, -1, h, c // h).transpose(1, 2)
        # Scale by the full key width as LAVT does (not per head).
        sim = torch.matmul(q, k.transpose(-1, -2)) * (c ** -0.5)
        sim = sim + (1e4 * word_mask[:, None, None, :].to(sim.dtype) - 1e4)  # as LAVT: -1e4 on padding words
        att = torch.matmul(F.softmax(sim, dim=-1), v)  # [B,h,N,c/h]
        att = att.transpose(1, 2).reshape(b, n, c)
        return self.out_norm(self.out(att).transpose(1, 2)).transpose(1, 2)


class PWAM(nn.Module):
    """Pixel-word attention module: project(vis) * attend(words) -> project; [B,N,C] -> [B,N,C]."""

    def __init__(self, vis_dim: int, lang_dim: int, num_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.vis_project = nn.Sequential(nn.Linear(vis_dim, vis_dim), nn.GELU(), nn.Dropout(dropout))
        self.attention = PixelWordAttention(vis_dim, lang_dim, num_heads)
        self.mm_project = nn.Sequential(nn.Linear(vis_dim, vis_dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        return self.mm_project(self.vis_project(x) * self.attention(x, words, word_mask))


class LanguageGate(nn.Module):
    """tanh(W2 relu(W1 f)) per channel, multiplied with f.

    Both weights start truncated-normal with std 0.02, as LAVT's Swin initialisation leaves them (the gate starts
    nearly closed, but not exactly: its gradients are not zero).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)
        trunc_normal_(self.fc1.weight, std=0.02)
        trunc_normal_(self.fc2.weight, std=0.02)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc2(F.relu(self.fc1(f)))) * f
