"""CLIP-style scorer for DoC filtering: image/text features and scaled-cosine logits.

The official filter uses CLIP RN50. Any open_clip model with ``encode_image`` / ``encode_text`` / ``logit_scale``
works, including the project's CoCa (its contrastive head), so on SynthRef the captioner doubles as the scorer.
Views come in as [0, 1] squares from `pseudo_ris.crops.make_views`; the scorer resizes and normalises them itself, so
captioner and scorer may use different input sizes and statistics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from pseudo_ris.data.errors import PseudoRISError


class ScorerLoadError(PseudoRISError):
    """A scorer checkpoint is missing or does not match the model config."""


class ClipScorer:
    """``logits(image_features(views), text_features(texts))`` = logit_scale * cosine, as CLIP's logits_per_image."""

    def __init__(self, model: torch.nn.Module, tokenize: Callable[[list[str]], torch.Tensor], image_size: int,
                 mean: Sequence[float], std: Sequence[float], *, device: str | torch.device = "cpu",
                 batch_size: int = 256) -> None:
        self.model = model.to(device).eval()
        self.tokenize = tokenize
        self.image_size = int(image_size)
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.device = torch.device(device)
        self.batch_size = batch_size

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    @torch.inference_mode()
    def image_features(self, views: torch.Tensor) -> torch.Tensor:
        """``views [B, 3, S, S]`` in [0, 1] -> L2-normalised features ``[B, D]``."""
        out = []
        for chunk in views.split(self.batch_size):
            x = chunk.to(self.device, torch.float32)
            if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                                  antialias=x.shape[-1] > self.image_size)
            x = (x - self.mean) / self.std
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 1)

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> L2-normalised features ``[T, D]``."""
        out = []
        texts = list(texts)
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenize(texts[i:i + self.batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 1)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` scaled cosines (the scale cancels in DoC's ratios with ``score_transform=logit``)."""
        return self.logit_scale * image_features @ text_features.T

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_open_clip(cls, name: str, pretrained: str | os.PathLike | None = None, *,
                       device: str | torch.device = "cpu", allow_download: bool = False,
                       **overrides: Any) -> "ClipScorer":
        """An open_clip model by name and pretrained tag or local checkpoint path (official: ``RN50``, ``openai``).

        A tag is read from the local open_clip / Hugging Face cache; it is fetched only with ``allow_download``.
        Without ``pretrained`` the model is randomly initialised (CoCa's decoder included)."""
        import open_clip

        from pseudo_ris.captioning.coca import register_project_configs
        from pseudo_ris.weights import check_open_clip_name, init_untrained_open_clip, resolve_open_clip_tag

        register_project_configs()  # names such as clip_synthref resolve without a CoCa loaded first
        check_open_clip_name(name, allow_download=allow_download)
        tag_cfg: dict = {}
        if pretrained:
            is_file = Path(pretrained).is_file()
            if not is_file and (Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
                                or os.sep in str(pretrained)):
                raise ScorerLoadError(f"scorer checkpoint not found: {pretrained}")
            if not is_file:
                pretrained, tag_cfg = resolve_open_clip_tag(name, str(pretrained), allow_download=allow_download,
                                                            option="generator.scorer.pretrained")
                if tag_cfg.get("quick_gelu"):  # e.g. RN50/openai was trained with QuickGELU
                    overrides.setdefault("force_quick_gelu", True)
        try:
            model = open_clip.create_model(name, pretrained=str(pretrained) if pretrained else None, **overrides)
        except Exception as exc:  # open_clip raises RuntimeError / AssertionError / KeyError on a mismatch
            what = f"checkpoint {pretrained}" if pretrained else "no weights"
            raise ScorerLoadError(f"cannot load scorer {name!r} from {what} (does it match the model config?): "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        if not pretrained:
            init_untrained_open_clip(model)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        mean = tag_cfg.get("mean") or getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = tag_cfg.get("std") or getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        return cls(model, open_clip.get_tokenizer(name), size, mean, std, device=device)

    @classmethod
    def from_coca_bundle(cls, bundle: Any, *, device: str | torch.device = "cpu") -> "ClipScorer":
        """The project CoCa (``pseudo_ris.captioning.load_coca``) used through its contrastive head."""
        tok = bundle.tokenizer
        tokenize = tok.encode if hasattr(tok, "encode") else tok
        return cls(bundle.model, tokenize, bundle.image_size, bundle.mean, bundle.std, device=device)
