"""CLIP encoders for CRIS, built with open_clip.

CRIS (Wang et al., CVPR 2022) reads three scales from CLIP's ModifiedResNet (C3, C4 and an attention-pooled C5 that
keeps the spatial map), per-word features from the text transformer and a sentence feature at the end-of-text token.
open_clip's modules are reused as they are so that CLIP checkpoints load unchanged; the dense attention pooling is
written here because open_clip's ``AttentionPool2d`` returns only the pooled token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ris_models.registry import ModelConfigError


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
        or Path(value).exists()
    )


def _clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """State dict of an open_clip checkpoint or of an OpenAI TorchScript archive (e.g. CRIS's ``pretrain/RN50.pt``)."""
    is_jit = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_jit = any(name.endswith("constants.pkl") for name in zf.namelist())
    if is_jit:
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):  # not weights
            state.pop(key, None)
        return dict(state)
    from open_clip.factory import load_state_dict

    return load_state_dict(str(path))


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """open_clip warns on the root logger for every random-init build; random init is intended here (tiny presets,
    or weights loaded right after), so drop that one message while building."""
    root = logging.getLogger()
    flt = _DropRandomInitNotice()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _random_clip(arch: str, overrides: dict[str, Any]) -> nn.Module:
    import open_clip

    from pseudo_ris.weights import init_untrained_open_clip

    with _quiet_random_init():
        return init_untrained_open_clip(open_clip.create_model(arch, pretrained=None, **overrides))


def shipped_clip_standin() -> Path:
    """The SynthRef CLIP stand-in shipped with the package (the tiny CRIS's encoders, trained contrastively)."""
    from pseudo_ris.foundation.registry import shipped_paths

    return shipped_paths()["clip"]


def create_clip(arch: str, pretrained: bool | str | None, overrides: dict[str, Any] | None, *,
                allow_download: bool = False) -> nn.Module:
    """Build an open_clip CLIP ``arch`` (e.g. "RN50") with config ``overrides``; load ``pretrained`` weights.

    ``pretrained`` is None or False (random init), True (the shipped SynthRef CLIP stand-in, which has the tiny
    CRIS's architecture only), an open_clip tag (e.g. "openai"; read from open_clip's local cache, fetched only with
    ``allow_download``) or a local checkpoint file. A missing file raises ModelConfigError naming it.
    """
    import open_clip

    from pseudo_ris.weights import resolve_open_clip_tag

    overrides = dict(overrides or {})
    if pretrained is None or pretrained is False:
        return _random_clip(arch, overrides)
    if pretrained is True:
        path = shipped_clip_standin()
        try:
            return _load_clip_file(arch, overrides, path)
        except ModelConfigError as err:
            raise ModelConfigError(
                f"model.pretrained=true means the shipped SynthRef CLIP stand-in, which fits the cris_tiny "
                f"architecture only, not {arch!r} with these overrides; give an open_clip tag or a CLIP file "
                f"instead, or pretrained=false for random init") from err
    pretrained = str(pretrained)
    if not _looks_like_path(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            raise ModelConfigError(
                f"unknown open_clip pretrained tag {pretrained!r} for {arch!r}; known tags: {tags} "
                f"(or give the path of a local checkpoint file)"
            )
        pretrained = str(resolve_open_clip_tag(arch, pretrained, allow_download=allow_download,
                                               option="model.pretrained")[0])
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ModelConfigError(
            f"CLIP checkpoint file not found: {path} (pretrained= takes an open_clip tag such as 'openai' "
            f"or the path of a local CLIP checkpoint, e.g. OpenAI's RN50.pt)"
        )
    return _load_clip_file(arch, overrides, path)


def _load_clip_file(arch: str, overrides: dict[str, Any], path: Path) -> nn.Module:
    """``arch`` with the weights of the CLIP checkpoint file ``path`` (strict: every key must match)."""
    model = _random_clip(arch, overrides)
    from open_clip.factory import resize_text_pos_embed

    state = _clip_state_dict(path)
    resize_text_pos_embed(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelConfigError(f"CLIP checkpoint {path} does not match architecture {arch!r}: {err}") from err
    return model


class DenseAttentionPool(nn.Module):
    """CLIP's attention pooling applied at every position, so C5 stays a feature map (as CRIS does).

    Uses the pretrained q/k/v/c projections and positional embedding of open_clip's ``AttentionPool2d`` (the
    embedding is resized bicubically to the input grid, the class-token slot is dropped) and adds a 1x1 conv + BN
    residual from the ResNet features, followed by ReLU.
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool  # open_clip AttentionPool2d, keeps pretrained parameter names under "pool."
        embed_dim = pool.q_proj.in_features
        out_dim = pool.c_proj.out_features
        self.connect = nn.Sequential(nn.Conv2d(embed_dim, out_dim, 1, bias=False), nn.BatchNorm2d(out_dim))

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        pos = self.pool.positional_embedding[1:]  # drop the class-token slot: [S*S, C]
        side = int(round(pos.shape[0] ** 0.5))
        grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if (side, side) != (h, w):
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).permute(2, 0, 1)  # [HW, 1, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        residual = self.connect(x)
        tokens = x.flatten(2).permute(2, 0, 1) + self._pos_embed(h, w).to(x.dtype)  # [HW, B, C]
        p = self.pool
        out, _ = F.multi_head_attention_forward(
            query=tokens, key=tokens, value=tokens,
            embed_dim_to_check=c, num_heads=p.num_heads,
            in_proj_weight=None,
            in_proj_bias=torch.cat([p.q_proj.bias, p.k_proj.bias, p.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=p.c_proj.weight, out_proj_bias=p.c_proj.bias,
            training=self.training, need_weights=False,
            use_separate_proj_weight=True,
            q_proj_weight=p.q_proj.weight, k_proj_weight=p.k_proj.weight, v_proj_weight=p.v_proj.weight,
        )
        out = out.permute(1, 2, 0).reshape(b, -1, h, w)
        return F.relu(out + residual)


class ClipImageEncoder(nn.Module):
    """ModifiedResNet -> (C3 stride 8, C4 stride 16, attention-pooled C5 stride 32)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        if not hasattr(visual, "attnpool"):
            raise ModelConfigError("CRIS needs a CLIP ResNet (ModifiedResNet) image tower, e.g. 'RN50' or 'RN101'")
        self.visual = visual
        self.dense_pool = DenseAttentionPool(visual.attnpool)
        self.visual.attnpool = nn.Identity()  # its parameters now live (once) in dense_pool.pool

    @property
    def channels(self) -> tuple[int, int, int]:
        v = self.visual
        return (v.layer2[-1].conv3.out_channels, v.layer3[-1].conv3.out_channels,
                self.dense_pool.pool.c_proj.out_features)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = self.visual
        x = v.layer1(v.stem(images))
        c3 = v.layer2(x)
        c4 = v.layer3(c3)
        c5 = self.dense_pool(v.layer4(c4))
        return c3, c4, c5


class ClipTextEncoder(nn.Module):
    """CLIP text transformer -> per-word features [B,L,width] and sentence feature [B,embed] at the EOT token.

    The sequence is cut to the tokenizer's length (CRIS: 17/22 words); the positional embedding and causal mask
    are sliced to match, so a 77-token pretrained checkpoint is used unchanged.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection

    @property
    def width(self) -> int:
        return self.token_embedding.embedding_dim

    @property
    def embed_dim(self) -> int:
        proj = self.text_projection
        if proj is None:
            return self.width
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = input_ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"text of {length} tokens exceeds the CLIP context length {self.context_length}")
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        causal = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
        x = self.ln_final(self.transformer(x, attn_mask=causal))
        # End-of-text = last attended position (CLIP's argmax trick would break on a user vocabulary).
        eot = attention_mask.long().sum(dim=1).clamp(min=1) - 1
        state = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = self.text_projection
        if proj is not None:
            state = proj(state) if isinstance(proj, nn.Linear) else state @ proj
        return x, state
