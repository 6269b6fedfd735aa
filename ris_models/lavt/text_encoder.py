"""BERT text encoder for LAVT (transformers), from a local directory, the HF cache (the hub only when downloads are
allowed), or a random config."""

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


def build_bert(bert_path: str | None, bert_config: dict[str, Any] | None, load_weights: bool = True, *,
               allow_download: bool = False) -> nn.Module:
    """``bert_path`` given: pretrained BertModel without pooler (``load_weights=False``: its architecture only,
    random init). Otherwise a random BertModel from ``bert_config`` (None = bert-base sizes). A hub name is read
    from its cached snapshot directory (with ``local_files_only``) unless ``allow_download``."""
    from transformers import BertConfig, BertModel

    if bert_path is None:
        return BertModel(BertConfig(**(bert_config or {})), add_pooling_layer=False)
    check_bert_path(bert_path)
    path = Path(bert_path).expanduser()
    if path.is_dir():
        source = str(path)
    elif allow_download:
        source = bert_path
    else:  # a hub name: its cached snapshot directory, read without any hub call
        from pseudo_ris.weights import hub_snapshot_dir

        source = str(hub_snapshot_dir(bert_path, option="model.bert_path"))
    local_only = not allow_download
    try:
        if not load_weights:
            return BertModel(BertConfig.from_pretrained(source, local_files_only=local_only), add_pooling_layer=False)
        return BertModel.from_pretrained(source, add_pooling_layer=False, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise ModelConfigError(f"could not load BERT {bert_path!r} ({err.__class__.__name__}); {_DOWNLOAD_HINT}") from err
