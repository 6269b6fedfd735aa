"""CRIS's vision-language decoder and text-to-pixel projector.

Decoder (CRIS Sec. 3.3): visual tokens attend to each other (self-attention, 2-D sine positions) and then to the
words (cross-attention, 1-D sine positions, padding masked), pre-norm with an extra norm on each attention output.
Projector (CRIS Sec. 3.4): the sentence feature becomes a per-sample 3x3 conv kernel + bias applied to the
upsampled (stride 4) visual map: text-to-pixel alignment as a dynamic convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ris_models.cris.neck import conv_bn_relu


def sine_pos_1d(dim: int, length: int, device: torch.device | None = None) -> torch.Tensor:
    """Transformer sine/cosine positions [length, dim]."""
    if dim % 2:
        raise ValueError(f"1-D sine positions need an even dim, got {dim}")
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


def sine_pos_2d(dim: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """2-D positions [H*W, dim]: first half of the channels encodes x, second half y."""
    if dim % 4:
        raise ValueError(f"2-D sine positions need dim divisible by 4, got {dim}")
    half = dim // 2
    px = sine_pos_1d(half, width, device)  # [W, half]
    py = sine_pos_1d(half, height, device)  # [H, half]
    pe = torch.cat([px[None, :, :].expand(height, -1, -1), py[:, None, :].expand(-1, width, -1)], dim=-1)
    return pe.reshape(height * width, dim)


def _attend(attn: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``attn``'s output, computed the way the official CRIS code computes it (it keeps the default
    ``need_weights=True``): explicit softmax(q k^T / sqrt(d)) v in ``multi_head_attention_forward``'s math path.

    ``need_weights=False`` would switch to ``scaled_dot_product_attention``, whose fused kernel rounds
    differently in float32 (5e-7 of a layer's output; the dynamic-conv projector amplifies it to 1.4e-5 on
    ``cris_r50``'s 416 px logits). The per-head weights it returns as well are discarded (not averaging them
    saves that reduction); the attention map is materialised, as in the official code.
    """
    return attn(query, key, value, key_padding_mask=pad_mask, need_weights=True, average_attn_weights=False)[0]


class VLDecoderLayer(nn.Module):
    """Pre-norm layer: self-attention over pixels, cross-attention pixels->words, FFN; sequence-first tensors
    (vis [HW, B, C], txt [L, B, C], positions [HW or L, 1, C], pad_mask [B, L])."""

    def __init__(self, d_model: int, nhead: int, dim_ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)  # sequence-first
        self.self_out_norm = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.cross_out_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, dim_ffn), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.LayerNorm(dim_ffn), nn.Linear(dim_ffn, d_model),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, vis: torch.Tensor, txt: torch.Tensor, vis_pos: torch.Tensor, txt_pos: torch.Tensor,
                pad_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(vis)
        qk = h + vis_pos
        vis = vis + self.drop(self.self_out_norm(_attend(self.self_attn, qk, qk, h)))
        h = self.norm2(vis)
        att = _attend(self.cross_attn, h + vis_pos, txt + txt_pos, txt, pad_mask)
        vis = vis + self.drop(self.cross_out_norm(att))
        return vis + self.drop(self.ffn(self.norm3(vis)))


class VLDecoder(nn.Module):
    """Stack of VLDecoderLayer on a [B,C,H,W] map and [B,L,C] words; returns [B,C,H,W].

    The layers run sequence-first ([HW, B, C], as the official code), so that float32 results agree with it
    operation for operation (see ``_attend`` and the return below).
    """

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_ffn: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VLDecoderLayer(d_model, nhead, dim_ffn, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, vis: torch.Tensor, words: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = vis.shape
        vis_pos = sine_pos_2d(c, h, w, vis.device).to(vis.dtype)[:, None]  # [HW, 1, C]
        txt_pos = sine_pos_1d(words.shape[-1], words.shape[1], vis.device).to(vis.dtype)[:, None]  # [L, 1, C]
        x = vis.flatten(2).permute(2, 0, 1)  # [HW, B, C]
        txt = words.transpose(0, 1)  # [L, B, C]
        for layer in self.layers:
            x = layer(x, txt, vis_pos, txt_pos, pad_mask)
        # The official code's strided view of the [HW, B, C] output. A batch-first decoder would hand over a map
        # that is channels-last in memory, and the projector's upsampling and convolutions would then run their
        # channels-last kernels, which round differently in float32.
        return self.norm(x).permute(1, 2, 0).reshape(b, c, h, w)


class DynamicConvProjector(nn.Module):
    """Upsample stride 16 -> 4 and convolve each sample with a kernel generated from its sentence feature."""

    def __init__(self, sentence_dim: int, in_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        half = in_dim // 2
        self.kernel_size = kernel_size
        self.vis = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_bn_relu(in_dim, in_dim, 3),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_bn_relu(in_dim, half, 3),
            nn.Conv2d(half, half, 1),
        )
        self.kernel = nn.Linear(sentence_dim, half * kernel_size * kernel_size + 1)

    def forward(self, x: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        x = self.vis(x)
        b, c, h, w = x.shape
        params = self.kernel(sentence)
        weight = params[:, :-1].reshape(b, c, self.kernel_size, self.kernel_size)
        bias = params[:, -1]
        # Grouped conv = one independent kernel per sample.
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, bias=bias, padding=self.kernel_size // 2, groups=b)
        return out.reshape(b, 1, h, w)
