"""Model registry: named size presets for the CRIS- and LAVT-style RIS networks.

Follows the factory style of open_clip (`create_model(name, **overrides)`) and segment-anything
(`sam_model_registry[...]`): a preset is a plain dict of constructor arguments, `build_model` merges user
overrides into it and instantiates the architecture named by its ``model_type``. The resolved arguments are kept
on the model as ``model.config`` so a checkpoint can rebuild the exact network with ``build_model(**config)``.

To rebuild a network only to load a trained state dict, use ``build_model(**config, load_pretrained=False)``: the
same architecture and tokenizer, without reading the initial CLIP / BERT / Swin weights (LAVT still reads the BERT
directory's config.json and vocab.txt, which define the architecture and the token ids).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import nn

from pseudo_ris.data.errors import PseudoRISError

__all__ = ["RISModel", "MODEL_REGISTRY", "build_model", "list_models", "ModelConfigError"]


class ModelConfigError(PseudoRISError, ValueError):
    """An unknown preset, an unknown override key, or weights that cannot be found."""


class RISModel(nn.Module):
    """Common interface of every referring-image-segmentation network in this package.

    The training engineer codes against this class only: images in, per-pixel logits out, plus the loss,
    the probability map and the normalisation/tokenisation that belong to the architecture.
    """

    model_type: str = ""  # "cris" | "lavt"
    input_size: int = 0  # square side the datamodule resizes images to
    image_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # applied to [0,1] images
    image_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    default_threshold: float = 0.5  # on foreground_prob
    backbone_lr_mult: float = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}

    def _set_io(self, *, input_size: int, image_mean: Sequence[float], image_std: Sequence[float],
                threshold: float, backbone_lr_mult: float, stride_reason: str) -> None:
        """Input size, normalisation, threshold and backbone LR factor: the attributes every architecture shares."""
        self.input_size = int(input_size)
        self.image_mean = tuple(float(v) for v in image_mean)  # type: ignore[assignment]
        self.image_std = tuple(float(v) for v in image_std)  # type: ignore[assignment]
        self.default_threshold = float(threshold)
        self.backbone_lr_mult = float(backbone_lr_mult)
        if self.input_size % 32:
            raise ModelConfigError(f"{self.model_type.upper()} input_size must be a multiple of 32 ({stride_reason}), "
                                   f"got {input_size}")

    # ---- text -------------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Return ``dict(input_ids=LongTensor[B,L], attention_mask=LongTensor[B,L])``."""
        raise NotImplementedError

    # ---- network ----------------------------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """images [B,3,S,S] normalised -> logits [B,C,h,w] (C=1 CRIS, 2 LAVT; h = w = S/4)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar training loss against a {0,1} float mask [B,S,S] (any S; resampling is done inside)."""
        raise NotImplementedError

    def foreground_prob(self, logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Foreground probability [B,H,W] in [0,1], bilinearly resized to ``size`` (logits' size if None)."""
        raise NotImplementedError

    # ---- optimisation -----------------------------------------------------------------------------------------
    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the pretrained encoders (trained at ``lr * backbone_lr_mult``)."""
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: pretrained encoders at ``lr * backbone_lr_mult``, the rest at ``lr``.

        Each group carries a ``name`` for logging; frozen parameters are left out.
        """
        backbone = [p for p in self.backbone_parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = []
        if backbone:
            groups.append({"name": "backbone", "params": backbone, "lr": lr * self.backbone_lr_mult})
        if head:
            groups.append({"name": "head", "params": head, "lr": lr})
        return groups


# ---- presets ----------------------------------------------------------------------------------------------------
# The one place the presets' numbers live (conf/model/*.yaml only name a preset and its user-facing options).
# Values checked against the official code: CRIS.pytorch e596332 config/refcoco/cris_r50.yaml, cris_r101.yaml, and
# LAVT-RIS 1da0af9 args.py / lib/backbone.py. Training numbers (learning rates, epochs...) are recipes (conf/recipe).
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_CRIS_COMMON: dict[str, Any] = dict(
    model_type="cris",
    pretrained=None,
    clip_overrides=None,
    word_len=17,  # CRIS: 17 for RefCOCO/RefCOCO+, 22 for RefCOCOg; training uses dataset.word_len
    fpn_in=(512, 1024, 1024),
    fpn_out=(256, 512, 1024),
    vis_dim=512,
    word_dim=1024,
    num_layers=3,
    num_head=8,
    dim_ffn=2048,
    dropout=0.1,
    input_size=416,
    image_mean=_OPENAI_MEAN,
    image_std=_OPENAI_STD,
    threshold=0.35,
    backbone_lr_mult=0.1,
)

MODEL_REGISTRY: dict[str, dict[str, Any]] = {
    # OpenAI CLIP ResNets (the weights CRIS starts from) were trained with QuickGELU in the text tower.
    "cris_r50": {**_CRIS_COMMON, "clip_arch": "RN50", "clip_overrides": {"quick_gelu": True}},
    # RN101's CLIP embedding is 512-d: attention-pooled C5 and the word features are 512 channels.
    "cris_r101": {**_CRIS_COMMON, "clip_arch": "RN101", "clip_overrides": {"quick_gelu": True},
                  "fpn_in": (512, 1024, 512), "word_dim": 512},
    "cris_tiny": {
        **_CRIS_COMMON,
        # Starts from the SynthRef CLIP stand-in shipped in pseudo_ris/assets/foundation (as CRIS starts from OpenAI
        # CLIP RN50); False = random init
        "pretrained": True,
        "clip_arch": "RN50",
        # A ResNet with one bottleneck per stage, width 16 -> C3/C4/C5 = 128/256/(embed) channels.
        "clip_overrides": {
            "embed_dim": 128,
            "vision_cfg": {"image_size": 128, "layers": [1, 1, 1, 1], "width": 16},
            "text_cfg": {"context_length": 17, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
        },
        "fpn_in": (128, 256, 128),
        "fpn_out": (32, 64, 128),
        "vis_dim": 64,
        "word_dim": 128,
        "num_layers": 1,
        "num_head": 4,
        "dim_ffn": 128,
        "dropout": 0.0,
        "input_size": 128,
        "backbone_lr_mult": 1.0,  # the tiny encoders (stand-in or random init) train at the full rate
    },
    "lavt_swin_b": dict(
        model_type="lavt",
        bert_path="bert-base-uncased",
        pretrained=False,  # True: the SynthRef stand-ins (lavt_tiny's architecture only)
        bert_config=None,
        vocab_file=None,
        bert_train_layers=10,  # LAVT optimises BERT encoder layers 0-9 only
        max_tokens=20,  # LAVT pads/truncates expressions to 20 tokens
        embed_dim=128,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        window_size=12,
        mlp_ratio=4.0,
        drop_path_rate=0.3,
        pwam_heads=1,
        decoder_hidden=512,  # LAVT: half the last stage's channels
        swin_pretrained=None,
        input_size=480,
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
        threshold=0.5,
        class_weights=(0.9, 1.1),
        backbone_lr_mult=1.0,  # LAVT trains encoder, BERT and decoder at one learning rate
        bert_dropout=False,  # LAVT never switches BERT to train mode: no dropout in BERT
        keep_sep=False,  # LAVT cuts at max_tokens after adding [CLS]/[SEP]: long expressions lose [SEP]
    ),
    "lavt_tiny": dict(
        model_type="lavt",
        bert_path=None,
        # True: the Swin starts from the stand-in trained on SynthRef foundation scenes (ris_models/assets/pretrained),
        # as LAVT starts from ImageNet Swin-B. Off by default: at the project's budgets no stand-in beat random init
        # (pseudo labels, 504 steps: val mIoU 3.2 vs 9.7, 2 seeds each; README)
        pretrained=False,
        # with pretrained=True, the BERT stand-in (MLM on SynthRef expressions) too: its colour / shape words are
        # near-synonyms (input embeddings at cosine 0.88 / 0.90) and Swin + BERT gave the worst runs (README)
        bert_standin=False,
        bert_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
                     "max_position_embeddings": 64},
        vocab_file="synthref_wordpiece.txt",  # under ris_models/assets/ unless absolute
        bert_train_layers=None,
        max_tokens=20,
        embed_dim=32,
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 4, 8),
        window_size=4,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        pwam_heads=1,
        decoder_hidden=64,
        swin_pretrained=None,
        input_size=128,
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
        threshold=0.5,
        class_weights=(0.9, 1.1),
        backbone_lr_mult=1.0,  # encoders (stand-in or random init) train at the full rate
        bert_dropout=False,
        keep_sep=False,
    ),
}


#: Options added to a model type after checkpoints were already written, with the value that reproduces how those
#: checkpoints were trained (LAVT before official parity: BERT dropout on, [SEP] kept when cutting long texts).
LEGACY_OPTIONS: dict[str, dict[str, Any]] = {"lavt": {"bert_dropout": True, "keep_sep": True}}


def complete_saved_config(config: dict[str, Any]) -> dict[str, Any]:
    """A model config saved in a checkpoint, with options it predates set to their earlier behaviour."""
    return {**LEGACY_OPTIONS.get(str(config.get("model_type")), {}), **config}


def list_models() -> list[str]:
    """Names of the registered presets."""
    return sorted(MODEL_REGISTRY)


def _builder(model_type: str) -> Callable[..., RISModel]:
    # Imported lazily: the model modules import RISModel from here.
    if model_type == "cris":
        from ris_models.cris.model import CRISModel

        return CRISModel
    if model_type == "lavt":
        from ris_models.lavt.model import LAVTModel

        return LAVTModel
    raise ModelConfigError(f"unknown model_type {model_type!r}; expected 'cris' or 'lavt'")


def build_model(name: str, load_pretrained: bool = True, allow_download: bool = False, **overrides: Any) -> RISModel:
    """Build preset ``name`` with constructor arguments ``overrides`` merged over the preset's values.

    ``build_model(**model.config)`` rebuilds the same architecture (``config`` includes ``name``); add
    ``load_pretrained=False`` to skip loading initial weights when a trained state dict follows. Initial weights named
    by an open_clip tag or a Hugging Face hub name come from the local caches unless ``allow_download=True``.
    Raises ModelConfigError for an unknown preset or override key.
    """
    if name not in MODEL_REGISTRY:
        raise ModelConfigError(f"unknown model preset {name!r}; available: {', '.join(list_models())}")
    cfg = copy.deepcopy(MODEL_REGISTRY[name])
    overrides = dict(overrides)
    model_type = overrides.pop("model_type", cfg["model_type"])
    if model_type != cfg["model_type"]:
        raise ModelConfigError(
            f"preset {name!r} is a {cfg['model_type']!r} model, cannot rebuild it as {model_type!r}"
        )
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ModelConfigError(
            f"unknown option(s) {unknown} for model preset {name!r}; valid: {sorted(k for k in cfg if k != 'model_type')}"
        )
    cfg.update(copy.deepcopy(overrides))
    cfg.pop("model_type")
    model = _builder(model_type)(**cfg, load_pretrained=load_pretrained, allow_download=allow_download)
    model.config = {"name": name, "model_type": model_type, **_jsonable(cfg)}
    return model


def check_weight_sources(name: str, allow_download: bool = False, **overrides: Any) -> None:
    """Fail fast, before any data is prepared, when an open_clip tag (``pretrained``) or a Hugging Face name
    (``bert_path``) of preset ``name`` is not on this machine and downloads are off. Local paths are checked by
    the builders themselves."""
    from pathlib import Path

    from pseudo_ris.weights import hub_file, hub_snapshot_dir, resolve_open_clip_tag

    if name not in MODEL_REGISTRY:
        return
    cfg = {**MODEL_REGISTRY[name], **{k: v for k, v in overrides.items() if v is not None}}
    if cfg["model_type"] == "lavt":
        from ris_models.pretraining.shipped import check_lavt_pretrained, standin_paths

        check_lavt_pretrained(cfg["pretrained"])
        check_lavt_pretrained(cfg.get("bert_standin", False), option="bert_standin")
        if cfg["pretrained"]:
            standin_paths()  # a package installed without its data says so here, before any data is prepared
    if allow_download:
        return
    tag = cfg.get("pretrained")
    if cfg["model_type"] == "cris" and tag is True:  # the shipped stand-in has the tiny CRIS's encoders only
        tiny = MODEL_REGISTRY["cris_tiny"]
        if (cfg["clip_arch"], cfg.get("clip_overrides")) != (tiny["clip_arch"], tiny["clip_overrides"]):
            raise ModelConfigError(f"model.pretrained=true (the shipped SynthRef CLIP stand-in) fits cris_tiny's "
                                   f"encoders only, not {name}'s; give an open_clip tag or a CLIP file, or "
                                   "model.pretrained=false for random init")
        from pseudo_ris.foundation.registry import shipped_paths

        shipped_paths()  # a package installed without its data says so here, before any data is prepared
    if cfg["model_type"] == "cris" and isinstance(tag, str) and "/" not in tag and not Path(tag).suffix:
        import open_clip

        if str(tag) in open_clip.list_pretrained_tags_by_model(cfg["clip_arch"]):  # unknown tags: the builder says
            resolve_open_clip_tag(cfg["clip_arch"], str(tag), option="model.pretrained")
    bert = cfg.get("bert_path")
    if cfg["model_type"] == "lavt" and bert and not Path(str(bert)).expanduser().exists() \
            and not str(bert).startswith((".", "/", "~")) and str(bert).count("/") <= 1:
        hub_snapshot_dir(str(bert), option="model.bert_path")
        if cfg.get("vocab_file") is None:
            hub_file(str(bert), "vocab.txt", option="model.bert_path")


def _jsonable(value: Any) -> Any:
    """Tuples -> lists so the config survives YAML/JSON round trips unchanged in meaning."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
