"""Where pretrained weights come from: local files by default, the network only when the user opts in.

Every loader that can reach a hub (open_clip pretrained tags, Hugging Face BERT names) goes through this module
with an ``allow_download`` flag (the configs' ``allow_download``, default false). Without it a tag or hub name is
resolved from the local caches only (open_clip's ``~/.cache/clip`` and the Hugging Face cache), and anything
missing is one ``WeightsUnavailableError`` line that says how to point at local files.

It also holds the one fix for an open_clip 3.3 trap that every model built without weights needs: CoCa's
``MultimodalTransformer`` allocates ``text_projection`` with ``torch.empty`` and never initialises it (its own
``init_parameters`` crashes: it reads ``self.transformer``, which the decoder does not have), so the vocabulary
logits of a randomly initialised CoCa are garbage (all 0 on one run, ~1e7 on the next).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pseudo_ris.data.errors import PseudoRISError

__all__ = [
    "DOWNLOAD_HINT",
    "WeightsUnavailableError",
    "init_untrained_open_clip",
    "init_text_decoder",
    "resolve_open_clip_tag",
    "check_open_clip_name",
    "hub_file",
    "hub_snapshot_dir",
]

DOWNLOAD_HINT = "or set allow_download=true to let it be fetched"


class WeightsUnavailableError(PseudoRISError):
    """Pretrained weights that are not on this machine while downloads are off (or that cannot be fetched)."""


# ---------------------------------------------------------------------------------------------- initialisation


def init_text_decoder(decoder: nn.Module) -> None:
    """Initialise CoCa's multimodal decoder as open_clip intends (normal, std width^-0.5 for the projection)."""
    try:
        decoder.init_parameters()
        return
    except AttributeError:  # open_clip 3.3: reads self.transformer, which the decoder does not have
        pass
    width, layers = decoder.width, decoder.layers
    proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
    attn_std = width ** -0.5
    fc_std = (2 * width) ** -0.5
    with torch.no_grad():
        for block in list(decoder.resblocks) + list(decoder.cross_attn):
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        if decoder.text_projection is not None:
            nn.init.normal_(decoder.text_projection, std=width ** -0.5)


def init_untrained_open_clip(model: nn.Module) -> nn.Module:
    """Call on every open_clip model built without pretrained weights (CLIP: nothing to do; CoCa: the decoder)."""
    decoder = getattr(model, "text_decoder", None)
    if decoder is not None:
        init_text_decoder(decoder)
    return model


# ---------------------------------------------------------------------------------------------- open_clip tags


def _open_clip_cached_file(cfg: dict) -> Path | None:
    """The file open_clip would load for a pretrained config, if it is already on this machine (no network)."""
    from open_clip.pretrained import _get_safe_alternatives

    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        model_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        for name in [*_get_safe_alternatives(filename), filename]:
            found = try_to_load_from_cache(model_id, name)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url", "")
    if url:
        target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return target
    return None


def resolve_open_clip_tag(name: str, tag: str, *, allow_download: bool = False,
                          option: str = "pretrained") -> tuple[Path, dict[str, Any]]:
    """Local file of open_clip weights ``name``/``tag`` and the tag's pretrained config (mean, std, quick_gelu).

    Without ``allow_download`` only the caches are looked at; ``option`` names the setting that takes a local file
    instead, for the error message. Unknown tags raise ``WeightsUnavailableError`` listing the known ones.
    """
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        raise WeightsUnavailableError(
            f"{option}={tag!r} is neither a file nor a known tag of {name!r} "
            f"(known tags: {list_pretrained_tags_by_model(name)})")
    cached = _open_clip_cached_file(cfg)
    if cached is not None:
        return cached, cfg
    if not allow_download:
        raise WeightsUnavailableError(
            f"open_clip weights {name}/{tag} are not on this machine and downloads are off: "
            f"give {option}=<local .pt/.bin/.safetensors file> {DOWNLOAD_HINT}")
    try:
        return Path(download_pretrained(cfg)), cfg
    except Exception as exc:  # network errors come in many types
        raise WeightsUnavailableError(
            f"cannot fetch open_clip weights {name}/{tag} ({type(exc).__name__}): "
            f"download them elsewhere and give {option}=<local file>") from exc


def check_open_clip_name(name: str, *, allow_download: bool = False) -> None:
    """Refuse open_clip model names that fetch a config or a text tower from the hub while downloads are off."""
    import open_clip

    if name.startswith("hf-hub:") and not allow_download:
        raise WeightsUnavailableError(
            f"open_clip model {name!r} is fetched from the Hugging Face hub and downloads are off: use a built-in "
            f"name with a local checkpoint, or 'local-dir:<dir>', {DOWNLOAD_HINT}")
    cfg = open_clip.get_model_config(name) or {}
    if (cfg.get("text_cfg") or {}).get("hf_model_name") and not allow_download:
        raise WeightsUnavailableError(
            f"open_clip model {name!r} builds its text tower from the Hugging Face hub and downloads are off: "
            f"{DOWNLOAD_HINT}")


# ---------------------------------------------------------------------------------------------- Hugging Face files


def _hf_cached(repo_id: str, filename: str) -> Path | None:
    """A file of a Hugging Face repo from the local cache, by a pure file-system lookup (no hub client call: even
    ``local_files_only`` downloads may contact the hub for other reasons)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def hub_file(repo_id: str, filename: str, *, allow_download: bool = False, option: str) -> Path:
    """``filename`` of a Hugging Face repo: from the local cache only unless ``allow_download``."""
    cached = _hf_cached(repo_id, filename)
    if cached is not None:
        return cached
    if not allow_download:
        raise WeightsUnavailableError(
            f"{filename} of {repo_id!r} is not in the local Hugging Face cache and downloads are off: "
            f"give {option}=<local directory> {DOWNLOAD_HINT}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:  # offline, unknown repo
        raise WeightsUnavailableError(
            f"cannot fetch {filename} of {repo_id!r} ({type(exc).__name__}): download it elsewhere and give "
            f"{option}=<local directory>") from exc


def hub_snapshot_dir(repo_id: str, *, option: str) -> Path:
    """The local snapshot directory of a cached Hugging Face model (its ``config.json`` must be cached), so that
    ``from_pretrained`` reads a directory and never talks to the hub."""
    cached = _hf_cached(repo_id, "config.json")
    if cached is None:
        raise WeightsUnavailableError(
            f"{repo_id!r} is not in the local Hugging Face cache and downloads are off: "
            f"give {option}=<local directory> {DOWNLOAD_HINT}")
    return cached.parent
