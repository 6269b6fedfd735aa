"""Caption tokenizers behind one small protocol.

Decoding never hard-codes token ids: it reads ``sot_id``/``eot_id``/``pad_id`` from the tokenizer, so the same
decoder serves real CoCa models (open_clip's 49,408-token BPE) and the project's tiny SynthRef models, whose
cost is dominated by the vocabulary projection and which therefore use a small word vocabulary.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Protocol, Sequence, runtime_checkable

import torch

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_json

__all__ = ["CaptionTokenizer", "OpenClipTokenizer", "WordTokenizer", "TokenizerError", "tokenizer_from_dict"]


class TokenizerError(PseudoRISError):
    """A vocabulary file is missing or malformed."""


@runtime_checkable
class CaptionTokenizer(Protocol):
    sot_id: int
    eot_id: int
    pad_id: int
    vocab_size: int
    context_length: int

    def encode(self, texts: list[str]) -> torch.LongTensor:  # [B, context_length]
        ...

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        ...


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return [int(i) for i in ids.flatten().tolist()]
    return [int(i) for i in ids]


class OpenClipTokenizer:
    """open_clip's bundled CLIP BPE (no download). CoCa pads with 0 (which is also the BPE token "!")."""

    def __init__(self, context_length: int = 76):
        from open_clip.tokenizer import SimpleTokenizer

        self._tok = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        self.sot_id = int(self._tok.sot_token_id)
        self.eot_id = int(self._tok.eot_token_id)
        self.pad_id = 0
        self.vocab_size = len(self._tok.encoder)

    def encode(self, texts: list[str]) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._tok(list(texts), context_length=self.context_length)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text between the start token and the first end token; trailing pads (generation stopped) dropped."""
        ids = _as_list(ids)
        if ids and ids[0] == self.sot_id:
            ids = ids[1:]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        while ids and ids[-1] == self.pad_id:
            ids.pop()
        ids = [i for i in ids if i != self.sot_id]
        return self._tok.decode(ids).strip()

    def to_dict(self) -> dict:
        return {"kind": "openclip", "context_length": self.context_length}


_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


class WordTokenizer:
    """Lower-cased word vocabulary: ``<pad>`` = 0 (CoCa's text tower pads with 0), ``<sot>``, ``<eot>``, ``<unk>``."""

    SPECIALS = ("<pad>", "<sot>", "<eot>", "<unk>")

    def __init__(self, words: Iterable[str], context_length: int = 32):
        vocab = list(self.SPECIALS)
        seen = set(vocab)
        for word in words:
            word = str(word).strip().lower()
            if not word or word in seen:
                continue
            if len(self.split(word)) != 1:
                raise TokenizerError(f"vocabulary entry {word!r} is not a single token")
            seen.add(word)
            vocab.append(word)
        if context_length < 3:
            raise TokenizerError(f"context_length must be >= 3, got {context_length}")
        self.vocab: list[str] = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.sot_id, self.eot_id, self.unk_id = 0, 1, 2, 3
        self.vocab_size = len(vocab)
        self.context_length = int(context_length)

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())

    @classmethod
    def from_texts(cls, texts: Iterable[str], context_length: int = 32) -> "WordTokenizer":
        """Vocabulary of every word seen in ``texts`` (sorted, so the ids do not depend on text order)."""
        words = sorted({w for t in texts for w in cls.split(t)})
        return cls(words, context_length=context_length)

    def encode(self, texts: list[str]) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.index.get(w, self.unk_id) for w in self.split(text)]
            ids = [self.sot_id] + ids[: self.context_length - 2] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        words = []
        for i in _as_list(ids):
            if i == self.eot_id:
                break
            if i in (self.sot_id, self.pad_id):
                continue
            words.append(self.vocab[i] if 0 <= i < self.vocab_size else "<unk>")
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"kind": "word", "context_length": self.context_length, "vocab": self.vocab}

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "WordTokenizer":
        try:
            vocab = list(data["vocab"])
            context_length = int(data.get("context_length", 32))
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenizerError(f"{source}: not a word vocabulary ({exc!r})") from exc
        if tuple(vocab[: len(cls.SPECIALS)]) != cls.SPECIALS:
            raise TokenizerError(f"{source}: vocabulary must start with {cls.SPECIALS}, got {vocab[:4]}")
        tok = cls(vocab[len(cls.SPECIALS):], context_length=context_length)
        if tok.vocab != vocab:
            raise TokenizerError(f"{source}: vocabulary has duplicate or non-normalised entries")
        return tok

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict(), indent=0)

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"cannot read word vocabulary {path}: {exc}") from exc
        return cls.from_dict(data, source=str(path))


def tokenizer_from_dict(data: dict, source: str = "<dict>") -> CaptionTokenizer:
    """Inverse of ``to_dict`` for both tokenizers (used by project checkpoints)."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "word":
        return WordTokenizer.from_dict(data, source=source)
    if kind == "openclip":
        return OpenClipTokenizer(context_length=int(data.get("context_length", 76)))
    raise TokenizerError(f"{source}: unknown tokenizer kind {kind!r}")
