"""LAVT-style referring segmentation network (Yang et al., CVPR 2022).

BERT words -> language-aware Swin (PWAM + language gate after every stage) -> simple decoder -> 2-class logits at
stride 4, trained with class-weighted cross-entropy (LAVT weights background 0.9, foreground 1.1) at input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ris_models.lavt.decoder import SimpleDecoder
from ris_models.lavt.encoder import LanguageAwareSwin
from ris_models.lavt.text_encoder import build_bert, check_bert_path
from ris_models.pretraining.shipped import check_lavt_pretrained, load_bert_weights, standin_paths
from ris_models.registry import ModelConfigError, RISModel
from ris_models.text import ASSETS_DIR, WordPieceTokenizer, resolve_asset


class LAVTModel(RISModel):
    """See module docstring; constructor arguments are the ``lavt_*`` preset keys of ``ris_models.registry``.

    ``pretrained=True`` starts the Swin from the SynthRef stand-in shipped in ``ris_models/assets/pretrained``, and the
    BERT from its stand-in as well when ``bert_standin`` (they fit ``lavt_tiny`` only). The BERT stand-in is opt-in:
    masked-language modelling on SynthRef's grammar cannot tell colours or shapes apart (they fill the same slots),
    so its attribute words start as near-synonyms, which a random BERT does not. An explicit ``swin_pretrained`` /
    ``bert_path`` replaces its part of them.
    """

    model_type = "lavt"

    def __init__(
        self,
        bert_path: str | None = "bert-base-uncased",
        pretrained: bool = False,
        bert_standin: bool = False,
        bert_config: dict[str, Any] | None = None,
        vocab_file: str | None = None,
        bert_train_layers: int | None = None,
        max_tokens: int = 20,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.3,
        pwam_heads: int = 1,
        decoder_hidden: int = 512,
        swin_pretrained: str | None = None,
        input_size: int = 480,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        threshold: float = 0.5,
        class_weights: Sequence[float] = (0.9, 1.1),
        backbone_lr_mult: float = 1.0,
        bert_dropout: bool = False,
        keep_sep: bool = False,
        load_pretrained: bool = True,
        allow_download: bool = False,
    ) -> None:
        super().__init__()
        self._set_io(input_size=input_size, image_mean=image_mean, image_std=image_std, threshold=threshold,
                     backbone_lr_mult=backbone_lr_mult, stride_reason="patch 4 x 3 merges")

        check_lavt_pretrained(pretrained)
        check_lavt_pretrained(bert_standin, option="bert_standin")
        standins = standin_paths() if pretrained and load_pretrained else {}
        if bert_path is not None:
            check_bert_path(bert_path)
        self.tokenizer = _build_tokenizer(bert_path, vocab_file, max_tokens, keep_sep, allow_download)
        if bert_path is None and bert_config is not None and "vocab_size" not in bert_config:
            bert_config = {**bert_config, "vocab_size": self.tokenizer.vocab_size}  # size the embedding to the vocab
        self.text_encoder = build_bert(bert_path, bert_config, load_weights=load_pretrained,
                                       allow_download=allow_download)
        vocab = self.text_encoder.config.vocab_size
        if self.tokenizer.vocab_size > vocab:
            raise ModelConfigError(f"tokenizer has {self.tokenizer.vocab_size} tokens but BERT's vocabulary is {vocab}")
        if max_tokens > self.text_encoder.config.max_position_embeddings:
            raise ModelConfigError(f"max_tokens={max_tokens} exceeds BERT's max_position_embeddings")
        if "bert" in standins and bert_standin and bert_path is None:  # an explicit bert_path wins
            load_bert_weights(self.text_encoder, standins["bert"], self.tokenizer.vocab_file)
        if bert_train_layers is not None:
            _freeze_bert_except_first(self.text_encoder, int(bert_train_layers))

        self.bert_dropout = bool(bert_dropout)
        self.encoder = LanguageAwareSwin(
            lang_dim=self.text_encoder.config.hidden_size, embed_dim=embed_dim,
            depths=depths, num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate, pwam_heads=pwam_heads,
            pretrained=(swin_pretrained or standins.get("swin")) if load_pretrained else None,
        )
        self.decoder = SimpleDecoder(self.encoder.channels, decoder_hidden)
        self.register_buffer("class_weights", torch.tensor([float(w) for w in class_weights]), persistent=False)

    def train(self, mode: bool = True) -> "LAVTModel":
        """As LAVT, BERT stays in eval mode (dropout off) while the rest trains, unless ``bert_dropout``: the official
        code builds BERT with ``from_pretrained`` (eval mode) and only ever calls ``train()`` on the other modules."""
        super().train(mode)
        if mode and not self.bert_dropout:
            self.text_encoder.eval()
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        words = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        feats = self.encoder(images, words, attention_mask)
        return self.decoder(feats)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted 2-class CE with logits bilinearly upsampled to the mask's size (as LAVT)."""
        if target.dim() == 4:
            target = target[:, 0]
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)
        weight = self.class_weights.to(device=logits.device, dtype=logits.dtype)
        return F.cross_entropy(logits, (target.float() > 0.5).long(), weight=weight)

    def foreground_prob(self, logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        prob = F.softmax(logits.float(), dim=1)[:, 1:2]
        if size is not None and tuple(size) != tuple(prob.shape[-2:]):
            prob = F.interpolate(prob, size=tuple(size), mode="bilinear", align_corners=False)
        return prob[:, 0].clamp(0.0, 1.0)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) + list(self.text_encoder.parameters())

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """As LAVT: Swin norms / position tables without weight decay, the rest of the encoder (PWAMs and gates
        included) and BERT at ``lr * backbone_lr_mult``, decoder at ``lr``."""
        blr = lr * self.backbone_lr_mult
        no_decay, decay = [], []
        for name, p in self.encoder.named_parameters():
            if not p.requires_grad:
                continue
            if "norm" in name or "relative_position_bias_table" in name or "absolute_pos_embed" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [
            {"name": "backbone_no_decay", "params": no_decay, "lr": blr, "weight_decay": 0.0},
            {"name": "backbone", "params": decay, "lr": blr},
            {"name": "head", "params": [p for p in self.decoder.parameters() if p.requires_grad], "lr": lr},
            {"name": "text", "params": [p for p in self.text_encoder.parameters() if p.requires_grad], "lr": blr},
        ]
        return [g for g in groups if g["params"]]


def _build_tokenizer(bert_path: str | None, vocab_file: str | None, max_tokens: int,
                     keep_sep: bool, allow_download: bool = False) -> WordPieceTokenizer:
    """An explicit vocab file wins, else the BERT directory's vocab.txt. Never a silent fallback: token ids must
    match the ones the text encoder was trained with."""
    if vocab_file is not None:
        return WordPieceTokenizer(resolve_asset(vocab_file), max_length=max_tokens, keep_sep=keep_sep)
    if bert_path is not None:
        return WordPieceTokenizer.from_pretrained(bert_path, max_length=max_tokens, keep_sep=keep_sep,
                                                  allow_download=allow_download)
    raise ModelConfigError(
        "LAVT needs a vocabulary: give bert_path=<BERT directory> or vocab_file=<vocab.txt> "
        f"(e.g. the shipped {ASSETS_DIR.name}/synthref_wordpiece.txt)"
    )


def _freeze_bert_except_first(bert: nn.Module, n_layers: int) -> None:
    """LAVT optimises only BERT encoder layers [0, n): embeddings and later layers stay at pretrained values."""
    for p in bert.parameters():
        p.requires_grad_(False)
    for layer in bert.encoder.layer[:n_layers]:
        for p in layer.parameters():
            p.requires_grad_(True)
