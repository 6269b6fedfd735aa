"""BERT text encoder for LAVT (transformers), from a local directory, the HF cache/hub, or a random config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ris_models.registry import ModelConfigError

_DOWNLOAD_HINT = (
    "download bert-base-uncased once (e.g. `huggingface-cli download bert-base-uncased --local-dir "
    "<dir>` or `BertModel.from_pretrained('bert-base-uncased').save_pretrained(<dir>)` plus the tokenizer) "
    "and pass bert_path=<dir>"
)


def _is_local(name: str) -> bool:
    """Paths start with . / ~ or have more than one separator; hub names are "name" or "org/name"."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name or Path(name).exists()


def check_bert_path(bert_path: str) -> None:
    """Fail early, with the download hint, when ``bert_path`` names a local directory that does not exist."""
    if _is_local(bert_path) and not Path(bert_path).expanduser().is_dir():
        raise ModelConfigError(f"BERT directory not found: {Path(bert_path).expanduser()}; {_DOWNLOAD_HINT}")


def build_bert(bert_path: str | None, bert_config: dict[str, Any] | None, load_weights: bool = True) -> nn.Module:
    """``bert_path`` given: pretrained BertModel without pooler (``load_weights=False``: its architecture only,
    random init). Otherwise a random BertModel from ``bert_config`` (None = bert-base sizes)."""
    from transformers import BertConfig, BertModel

    if bert_path is None:
        return BertModel(BertConfig(**(bert_config or {})), add_pooling_layer=False)
    check_bert_path(bert_path)
    path = Path(bert_path).expanduser()
    source = str(path) if path.is_dir() else bert_path
    try:
        if not load_weights:
            return BertModel(BertConfig.from_pretrained(source), add_pooling_layer=False)
        return BertModel.from_pretrained(source, add_pooling_layer=False)
    except (OSError, ValueError) as err:
        raise ModelConfigError(f"could not load BERT {bert_path!r} ({err.__class__.__name__}); {_DOWNLOAD_HINT}") from err
