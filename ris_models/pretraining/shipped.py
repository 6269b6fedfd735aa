"""Where the LAVT stand-ins shipped in the package live, how they are read, and their fingerprint.

``model.pretrained=true`` on ``lavt_tiny`` starts the Swin from ``lavt_tiny_swin.pt``, and with
``model.bert_standin=true`` also the BERT from the ``lavt_tiny_bert/`` directory (a Hugging Face BERT-MLM directory,
as bert-base-uncased is one) in ``ris_models/assets/pretrained``. Kept free of heavy imports: the RIS model reads it at construction.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ris_models.registry import ModelConfigError

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "assets" / "pretrained"
SWIN_FILE = "lavt_tiny_swin.pt"
BERT_DIR = "lavt_tiny_bert"
BERT_WEIGHTS = "model.safetensors"


def standin_paths() -> dict[str, Path]:
    """``{"swin": file, "bert": directory}`` of the shipped stand-ins (raises naming the missing one)."""
    paths = {"swin": SHIPPED_DIR / SWIN_FILE, "bert": SHIPPED_DIR / BERT_DIR}
    if not paths["swin"].is_file() or not (paths["bert"] / BERT_WEIGHTS).is_file():
        raise ModelConfigError(
            f"the shipped LAVT stand-ins are missing under {SHIPPED_DIR}; reinstall the package with its package "
            "data, train them (python tools/train_foundation.py model=swin|bert) and pass model.swin_pretrained / "
            "model.bert_path, or use model.pretrained=false")
    return paths


def check_lavt_pretrained(value: Any, option: str = "pretrained") -> None:
    """LAVT's ``model.pretrained`` and ``model.bert_standin`` are booleans (own weights go through
    ``swin_pretrained`` / ``bert_path``)."""
    if not isinstance(value, bool):
        what = ("the shipped SynthRef Swin stand-in" if option == "pretrained"
                else "with pretrained=true, the BERT stand-in as well")
        raise ModelConfigError(f"LAVT's model.{option} is true ({what}) or false, got {value!r}; give own weights "
                               "with model.swin_pretrained=<file> and model.bert_path=<BERT directory>")


def load_bert_weights(bert: nn.Module, directory: str | Path, vocab_file: str | Path | None = None) -> None:
    """Fill ``bert`` (a BertModel without pooler) from a BERT-MLM directory's ``model.safetensors``, strictly:
    every tensor present with its shape (the MLM head ``cls.*`` is ignored).

    One exception keeps the default model working when the shipped vocabulary grows (it is append-only): if the
    directory's ``vocab.txt`` is a prefix of ``vocab_file``, the known words take their trained embeddings and the
    new ones keep their random initialisation."""
    from safetensors.torch import load_file

    file = Path(directory) / BERT_WEIGHTS
    state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in load_file(str(file)).items()
             if not k.startswith("cls.")}
    ours = bert.state_dict()
    words = "embeddings.word_embeddings.weight"
    if words in state and words in ours and len(state[words]) < len(ours[words]) and \
            state[words].shape[1:] == ours[words].shape[1:] and _vocab_extends(Path(directory) / "vocab.txt", vocab_file):
        grown = ours[words].clone()
        grown[:len(state[words])] = state[words]
        state[words] = grown
    wrong = [f"{k} {list(v.shape)} (ours {list(ours[k].shape)})" for k, v in state.items()
             if k in ours and tuple(v.shape) != tuple(ours[k].shape)]
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if wrong or missing or unexpected:
        raise ModelConfigError(
            f"BERT stand-in {file} does not fit this text encoder: shapes {wrong[:3]}, missing {missing[:3]}, "
            f"unexpected {unexpected[:3]} (the stand-ins fit lavt_tiny's architecture and vocabulary only; "
            "use model.pretrained=false for another architecture)")
    bert.load_state_dict(state, strict=True)


def _vocab_extends(trained: Path, current: str | Path | None) -> bool:
    """``current`` holds the entries of ``trained`` first, in the same order (the ids the BERT was trained with)."""
    if current is None or not trained.is_file() or not Path(current).is_file():
        return False
    old, new = trained.read_text().split("\n"), Path(current).read_text().split("\n")
    old = [w for w in old if w]
    return new[:len(old)] == old


def standin_fingerprint(model_cfg: Mapping[str, Any]) -> dict[str, str] | None:
    """Content hashes of the shipped stand-ins a ``model`` config starts from (``pretrained=true``; None when it uses
    none): part of a run's identity, so retrained stand-ins never resume a run begun from the old ones."""
    from ris_models.registry import MODEL_REGISTRY

    name = str(model_cfg.get("name"))
    preset = MODEL_REGISTRY.get(name, {})

    def option(key: str) -> Any:
        value = model_cfg.get(key)
        return preset.get(key, False) if value is None else value

    if option("pretrained") is not True:
        return None  # random init, or weights named by the user (a tag or a path, recorded as given)
    if preset.get("model_type") == "lavt":
        paths = standin_paths()
        hashes = {"swin": _sha(paths["swin"])}
        if option("bert_standin"):
            hashes["bert"] = _sha(paths["bert"] / BERT_WEIGHTS)
        return hashes
    if preset.get("model_type") == "cris":  # the SynthRef CLIP stand-in the tiny CRIS starts from
        from ris_models.cris.encoders import shipped_clip_standin

        return {"clip": _sha(shipped_clip_standin())}
    return None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
