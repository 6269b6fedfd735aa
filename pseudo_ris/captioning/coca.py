"""Load an open_clip CoCa by name + pretrained tag / local checkpoint, with its tokenizer and preprocessing.

Model names are open_clip's (``coca_ViT-L-14``, ``coca_ViT-B-32``) or project configs in ``pseudo_ris/configs``
(``coca_tiny``, ``coca_synthref``), registered with ``open_clip.add_model_config`` so both go through one
registry. We build the ``open_clip.CoCa`` ourselves (rather than ``create_model``) so that a checkpoint that
does not fit the config fails with a message naming the file and the first bad keys, and so that the
open_clip 3.3 initialisation trap of a CoCa built without weights is fixed by the one function every loader
calls, ``pseudo_ris.weights.init_untrained_open_clip``. Pretrained tags come from the local caches unless the
caller allows downloads.
"""

from __future__ import annotations

import copy
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_bytes
from pseudo_ris.weights import init_text_decoder, init_untrained_open_clip, resolve_open_clip_tag

from .tokenizer import CaptionTokenizer, OpenClipTokenizer, tokenizer_from_dict

__all__ = [
    "CONFIG_DIR",
    "CHECKPOINT_FORMAT",
    "CocaBundle",
    "CocaLoadError",
    "coca_config",
    "init_text_decoder",
    "load_coca",
    "save_coca_checkpoint",
]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CHECKPOINT_FORMAT = "pseudo_ris.coca/v1"
CLIP_VOCAB_SIZE = 49408


class CocaLoadError(PseudoRISError):
    """A CoCa name, tag or checkpoint cannot be resolved or does not match its config."""


def register_project_configs() -> None:
    """Make the project's open_clip model configs (the SynthRef CoCa and CLIP stand-ins) known to open_clip."""
    from open_clip.factory import _MODEL_CONFIG_PATHS  # read-only check to stay idempotent

    if CONFIG_DIR not in [Path(p).resolve() for p in _MODEL_CONFIG_PATHS]:
        open_clip.add_model_config(CONFIG_DIR)


register_project_configs()


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def coca_config(name: str, **overrides: Any) -> dict:
    """The open_clip model config of ``name`` with nested ``overrides`` merged (e.g. ``text_cfg={"layers": 1}``)."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        coca_names = [m for m in open_clip.list_models() if "coca" in m.lower()]
        raise CocaLoadError(f"unknown CoCa model {name!r}; known: {coca_names}")
    if "multimodal_cfg" not in cfg:
        raise CocaLoadError(f"model {name!r} is not a CoCa (its config has no multimodal_cfg)")
    return _merge(cfg, overrides)


@dataclass
class CocaBundle:
    """A CoCa model in eval mode with what decoding needs to feed it."""

    model: nn.Module
    tokenizer: CaptionTokenizer
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = ""
    config: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float ``[B,3,H,W]`` in [0,1] -> normalised ``[B,3,S,S]`` on the model's device (resized if needed)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised pixels -> (L2-normalised image latents ``[B,E]``, decoder image tokens ``[B,T,D]``)."""
        latents, tokens = self.model._encode_image(pixels, normalize=True)
        return latents, tokens


def _default_tokenizer(cfg: dict, name: str) -> CaptionTokenizer:
    vocab = int(cfg["text_cfg"].get("vocab_size", CLIP_VOCAB_SIZE))
    if vocab != CLIP_VOCAB_SIZE:
        raise CocaLoadError(
            f"model {name!r} has a {vocab}-token vocabulary: pass tokenizer=WordTokenizer(...) "
            f"(or load a project checkpoint that stores one)")
    return OpenClipTokenizer(context_length=int(cfg["text_cfg"].get("context_length", 76)))


def _fit_config_to_tokenizer(cfg: dict, tokenizer: CaptionTokenizer, name: str) -> dict:
    cfg = copy.deepcopy(cfg)
    for key in ("text_cfg", "multimodal_cfg"):
        cfg[key]["vocab_size"] = int(tokenizer.vocab_size)
    ctx = int(cfg["text_cfg"].get("context_length", 77))
    if tokenizer.context_length > ctx:
        raise CocaLoadError(
            f"tokenizer context_length {tokenizer.context_length} exceeds model {name!r} context_length {ctx}")
    return cfg


def _build(cfg: dict, device: str | torch.device) -> nn.Module:
    kwargs = {k: v for k, v in cfg.items() if k not in ("custom_text", "preprocess_cfg")}
    kwargs.setdefault("pad_id", 0)
    model = open_clip.CoCa(**kwargs)
    return model.to(device)


def _check_state_dict(model: nn.Module, state: dict, source: str, name: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (first: {shapes[:3]})")
        raise CocaLoadError(f"checkpoint {source} does not match CoCa config {name!r}: " + "; ".join(parts))


def _read_checkpoint(path: Path) -> Any:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CocaLoadError(f"cannot read CoCa checkpoint {path}: {exc}") from exc


def _open_clip_state(obj: Any, source: str) -> dict:
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CocaLoadError(f"{source}: not a state dict")
    if next(iter(obj)).startswith("module."):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _resolve_tag(name: str, tag: str, allow_download: bool) -> tuple[Path, dict]:
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    if not get_pretrained_cfg(name, tag):
        raise CocaLoadError(
            f"pretrained={tag!r} is neither a file nor a known tag of {name!r} "
            f"(known tags: {list_pretrained_tags_by_model(name)})")
    return resolve_open_clip_tag(name, tag, allow_download=allow_download)


def load_coca(
    name: str,
    pretrained: str | os.PathLike | None = None,
    *,
    tokenizer: CaptionTokenizer | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    **overrides: Any,
) -> CocaBundle:
    """Build CoCa ``name`` and load ``pretrained`` (open_clip tag, open_clip state dict file or project checkpoint).

    ``overrides`` are merged into the model config (nested dicts merge). Without weights the decoder projection
    is initialised (see module docstring). A project checkpoint carries its own config and tokenizer. A tag is
    read from the local open_clip / Hugging Face cache; it is fetched only with ``allow_download=True``.
    """
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    state = None
    source = ""
    if pretrained is not None and Path(pretrained).is_file():
        source = str(pretrained)
        obj = _read_checkpoint(Path(pretrained))
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            stored = obj.get("model_name", name)
            if name and stored != name:
                raise CocaLoadError(f"checkpoint {source} holds model {stored!r}, not {name!r}")
            cfg = _merge(obj["model_cfg"], overrides)
            if tokenizer is None:
                tokenizer = tokenizer_from_dict(obj["tokenizer"], source=source)
            mean, std = tuple(obj.get("mean", mean)), tuple(obj.get("std", std))
            state = obj["state_dict"]
        else:
            cfg = coca_config(name, **overrides)
            state = _open_clip_state(obj, source)
    elif pretrained is not None:
        cfg = coca_config(name, **overrides)
        path, tag_cfg = _resolve_tag(name, str(pretrained), allow_download)
        source = str(path)
        state = _open_clip_state(_read_checkpoint(path), source)
        mean, std = tuple(tag_cfg.get("mean", mean)), tuple(tag_cfg.get("std", std))
    else:
        cfg = coca_config(name, **overrides)

    if tokenizer is None:
        tokenizer = _default_tokenizer(cfg, name)
    cfg = _fit_config_to_tokenizer(cfg, tokenizer, name)
    model = _build(cfg, "cpu")
    if state is None:
        init_untrained_open_clip(model)
    else:
        _check_state_dict(model, state, source, name)
        model.load_state_dict(state, strict=True)
    model = model.to(device).eval()
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return CocaBundle(model=model, tokenizer=tokenizer, image_size=size, mean=tuple(float(m) for m in mean),
                      std=tuple(float(s) for s in std), name=name, config=cfg)


def save_coca_checkpoint(bundle: CocaBundle, path: str | os.PathLike) -> Path:
    """Write model config + weights + tokenizer + normalisation in one file (atomic) that ``load_coca`` reads."""
    tok = bundle.tokenizer
    if not hasattr(tok, "to_dict"):
        raise CocaLoadError(f"tokenizer {type(tok).__name__} cannot be stored in a checkpoint")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": bundle.name,
        "model_cfg": json.loads(json.dumps(bundle.config)),
        "tokenizer": tok.to_dict(),
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        "state_dict": {k: v.detach().cpu() for k, v in bundle.model.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())
