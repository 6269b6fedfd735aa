"""Text tokenizers for the RIS models; none of them downloads anything unless asked to (``allow_download``).

Both return the same batch format, ``dict(input_ids=LongTensor[B,L], attention_mask=LongTensor[B,L])`` with a fixed
``L`` (models and collate functions rely on a constant length):

* ``ClipBpeTokenizer``: open_clip's bundled BPE (49,408 tokens), ``<sot> ... <eot>`` then zero padding, truncated to
  the context length with ``<eot>`` kept last (CRIS uses 17 words for RefCOCO/+, 22 for RefCOCOg).
* ``WordPieceTokenizer``: a BERT WordPiece vocabulary file (``[CLS] ... [SEP]`` then ``[PAD]``), used by LAVT with
  bert-base-uncased's own ``vocab.txt`` or the small SynthRef vocabulary shipped in ``ris_models/assets``. Long texts
  are cut to keep ``[SEP]`` last, or (``keep_sep=False``, LAVT's rule) cut after the special tokens are added, so
  a text longer than ``max_length - 2`` word pieces ends without ``[SEP]``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pseudo_ris.data.errors import PseudoRISError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


class TokenizerError(PseudoRISError, ValueError):
    """A vocabulary file that is missing or unusable."""


class ClipBpeTokenizer:
    """open_clip's CLIP BPE tokenizer at a fixed context length."""

    def __init__(self, context_length: int = 77) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        if context_length < 3:
            raise TokenizerError(f"context_length must be >= 3 (sot, a word, eot), got {context_length}")
        self.context_length = int(context_length)
        self._tok = SimpleTokenizer(context_length=self.context_length)
        self.pad_id = 0
        self.sot_id = self._tok.sot_token_id
        self.eot_id = self._tok.eot_token_id
        self.vocab_size = len(self._tok.encoder)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        ids = self._tok(list(texts), context_length=self.context_length).long()
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}


class WordPieceTokenizer:
    """A BERT WordPiece tokenizer from a local ``vocab.txt`` (lower-cased), padded to ``max_length``."""

    def __init__(self, vocab_file: str | Path, max_length: int = 20, keep_sep: bool = True) -> None:
        from transformers import BertTokenizerFast

        path = Path(vocab_file)
        if not path.is_file():
            raise TokenizerError(f"WordPiece vocabulary file not found: {path}")
        self.vocab_file = path
        self.max_length = int(max_length)
        self.keep_sep = bool(keep_sep)
        self._tok = _bert_tokenizer(BertTokenizerFast, path)
        self.pad_id = self._tok.pad_token_id
        self.vocab_size = self._tok.vocab_size

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, max_length: int = 20, *, keep_sep: bool = True,
                        allow_download: bool = False) -> "WordPieceTokenizer":
        """The ``vocab.txt`` of a local BERT directory, or of a hub name in the Hugging Face cache (fetched from
        the hub only with ``allow_download``)."""
        from pseudo_ris.weights import hub_file

        directory = Path(name_or_dir).expanduser()
        if directory.is_dir():
            return cls(directory / "vocab.txt", max_length=max_length, keep_sep=keep_sep)
        vocab = hub_file(str(name_or_dir), "vocab.txt", allow_download=allow_download, option="model.bert_path")
        return cls(vocab, max_length=max_length, keep_sep=keep_sep)

    def tokens(self, text: str) -> list[str]:
        """WordPiece tokens of one text (no special tokens); handy to check vocabulary coverage."""
        return self._tok.tokenize(text)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if not self.keep_sep:  # LAVT: [CLS] pieces [SEP], then the first max_length ids, zero-padded
            rows = [ids[:self.max_length] for ids in self._tok(list(texts), add_special_tokens=True)["input_ids"]]
            ids = torch.full((len(rows), self.max_length), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), self.max_length), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
                mask[i, :len(row)] = 1
            return {"input_ids": ids, "attention_mask": mask}
        enc = self._tok(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


def _bert_tokenizer(cls: type, path: Path):
    """transformers 5 takes ``vocab=`` (path or dict), 4.x ``vocab_file=``; pass whichever this version has."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    key = "vocab" if "vocab" in params else "vocab_file"
    tok = cls(**{key: str(path)}, do_lower_case=True)
    if tok.vocab_size < 6:  # a silently ignored argument gives an empty vocabulary
        raise TokenizerError(f"could not read the WordPiece vocabulary {path} with {cls.__name__}")
    return tok


def resolve_asset(path: str | Path) -> Path:
    """An absolute/existing path is used as is; a bare name refers to ``ris_models/assets/<name>``."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return ASSETS_DIR / p


# ---- the small WordPiece vocabulary shipped for lavt_tiny ------------------------------------------------------
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SUFFIXES = ["##s", "##es", "##ed", "##ing", "##er", "##est", "##ly", "##ish", "##y", "##ness", "##al", "##'s"]
#: Basic English for referring expressions beyond SynthRef's own lists (so paraphrases rarely fall back to letters).
BASIC_WORDS: tuple[str, ...] = tuple("""
a an the this that these those it its is are was be being of to in on at by for from with without and or but not no
one two three four five first second third last other another only both each all any some same different
left right top bottom middle center centre centered above below under over next near far beside behind front back
between among around inside outside close closer closest farther furthest side corner edge end upper lower
shape object thing item photo picture image of a the that is to who which what where there here
circle square triangle star heart cross diamond hexagon pentagon octagon ellipse oval rectangle ring crescent moon
arrow cube ball dot disk disc donut box block plus sign symbol figure form line polygon
red green blue yellow purple orange white black pink brown gray grey cyan magenta violet turquoise teal gold silver
dark light bright pale colored coloured colour color
small big large tiny huge little medium short tall long wide narrow thin thick smaller bigger larger largest smallest
man woman person people guy girl boy lady kid child player shirt car table chair dog cat
""".split())


def build_wordpiece_vocab(words: list[str]) -> list[str]:
    """Specials, single characters (+ ``##`` continuations, so any lower-case ASCII word still tokenises without
    [UNK]), common suffixes, then the given words; duplicates removed, order stable."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    punct = list(".,;:!?'\"-()/&")
    entries = _SPECIAL + punct + chars + ["##" + c for c in chars] + _SUFFIXES + sorted({w.lower() for w in words})
    seen: set[str] = set()
    return [e for e in entries if not (e in seen or seen.add(e))]


def update_wordpiece_vocab(path: str | Path, words: list[str]) -> list[str]:
    """Append ``words`` missing from the vocabulary file (created if absent) and write it atomically.

    Append-only, so token ids of existing entries never change and trained tiny checkpoints stay valid.
    """
    from pseudo_ris.data.io import atomic_write_text

    path = Path(path)
    existing = path.read_text().split("\n") if path.is_file() else []
    existing = [e for e in existing if e]
    fresh = build_wordpiece_vocab(words)
    known = set(existing)
    entries = existing + [e for e in fresh if e not in known]
    if entries != existing:
        atomic_write_text(path, "\n".join(entries) + "\n")
    return entries


def synthref_vocab_words() -> list[str]:
    """Words the shipped vocabulary must hold as single tokens: BASIC_WORDS + every SynthRef word."""
    from pseudo_ris.synthref.vocab import all_words

    return list(BASIC_WORDS) + list(all_words())


if __name__ == "__main__":  # python -m ris_models.text  -> refresh ris_models/assets/synthref_wordpiece.txt
    n = len(update_wordpiece_vocab(ASSETS_DIR / "synthref_wordpiece.txt", synthref_vocab_words()))
    print(f"{ASSETS_DIR / 'synthref_wordpiece.txt'}: {n} entries")
