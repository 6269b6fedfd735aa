"""Head noun phrase of a caption, for the correctness prompt of DoC filtering (arXiv 2407.07412, Sec. 3.2).

The official code takes spaCy's noun chunk of the caption's root: a chunk keeps its determiner and adjectives
("a small red circle"), so by default we keep them too (``keep_modifiers=True``): then M[j] asks "is mask j a small red
circle?", which also checks the attributes the caption states. ``keep_modifiers=False`` returns the bare head noun
("circle"), a pure category check.

Two extractors with one interface, ``extractor(caption) -> NounPhrase``:
- `RuleNounExtractor` (default, no dependency): the leading phrase up to the first preposition / verb / clause word;
  the head is the first known noun in it (SynthRef shape words and generic nouns), else its last word. This is right
  for captioner-style text ("a small red circle on the left", "two dogs playing in the grass").
- `SpacyNounExtractor`: spaCy noun chunks when spaCy and a model are installed; the chunk whose root is the sentence
  root, else the first chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from pseudo_ris.synthref import vocab

ARTICLES = ("a", "an", "the")
# Determiners that make "a photo of a {n}" ungrammatical ("a photo of a two dogs"): treated like articles in the prompt.
DETERMINERS = frozenset(ARTICLES) | frozenset("""this that these those some several many few two three four five six
seven eight nine ten his her its their my our your""".split())

# Words that end the leading noun phrase (prepositions, verbs of being, relative/clause words, conjunctions).
_BOUNDARY = frozenset("""
on in at of to with near next by beside besides behind under underneath below above over beneath between among
inside outside into onto from across along against around toward towards through up down off
is are was were be being been has have having that which who whose where while and or but than as
""".split())
# Caption prefixes that carry no object ("a picture of ...", "there is ...").
_PREFIXES = (("there", "is"), ("there", "are"), ("this", "is"), ("it", "is"), ("an", "image", "of"),
             ("a", "picture", "of"), ("a", "photo", "of"), ("an", "photo", "of"), ("a", "close", "up", "of"),
             ("the", "image", "of"), ("image", "of"), ("photo", "of"), ("picture", "of"))
# "-ing" words that are nouns, not participles ("a building", "a painting").
_ING_NOUNS = frozenset("""building buildings ceiling painting paintings clothing railing awning king ring rings string
wing wings thing things wedding pudding icing frosting bedding sibling siblings swing swings sling""".split())
_KNOWN_NOUNS = frozenset(w for ws in vocab.SHAPE_SYNONYMS.values() for w in ws if w != "round") | frozenset(
    vocab.GENERIC_NOUNS) - {"one"}


@dataclass(frozen=True)
class NounPhrase:
    text: str  # the phrase used in the prompt (with or without modifiers)
    head: str  # the head noun alone


class NounExtractor(Protocol):
    def __call__(self, caption: str) -> NounPhrase: ...


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


class RuleNounExtractor:
    """Dependency-free head noun phrase (see module docstring)."""

    def __init__(self, keep_modifiers: bool = True, known_nouns: frozenset[str] = _KNOWN_NOUNS) -> None:
        self.keep_modifiers = keep_modifiers
        self.known_nouns = known_nouns

    def _participle(self, words: list[str], i: int) -> bool:
        w = words[i]
        if not (w.endswith("ing") and len(w) > 4) or w in _ING_NOUNS or w in self.known_nouns:
            return False
        return words[i - 1] not in ARTICLES  # "a man riding" breaks, "a sleeping cat" does not

    def __call__(self, caption: str) -> NounPhrase:
        words = _words(caption)
        stripped = True
        while stripped:  # "there is a photo of a dog" -> "a dog"
            stripped = False
            for prefix in _PREFIXES:
                if len(words) > len(prefix) and tuple(words[: len(prefix)]) == prefix:
                    words = words[len(prefix):]
                    stripped = True
        end = len(words)
        for i, w in enumerate(words):
            # a boundary word or a present participle ("riding", "sitting") after at least one word ends the phrase;
            # "left"/"right" after "the" may be an adjective ("the left circle"): only a known noun decides then.
            if i > 0 and (w in _BOUNDARY or self._participle(words, i)):
                end = i
                break
        chunk = words[:end]
        if not chunk:
            return NounPhrase(caption.strip().lower(), caption.strip().lower())
        head_idx = next((i for i, w in enumerate(chunk) if w in self.known_nouns), len(chunk) - 1)
        head = chunk[head_idx]
        phrase = " ".join(chunk[: head_idx + 1]) if self.keep_modifiers else head
        return NounPhrase(phrase, head)


class SpacyNounExtractor:
    """spaCy noun chunks (the official code's tool); raises ImportError/OSError if spaCy or the model is missing."""

    def __init__(self, model: str = "en_core_web_sm", keep_modifiers: bool = True) -> None:
        import spacy  # optional dependency: pip install pseudo-ris[spacy] && python -m spacy download ...

        self.nlp = spacy.load(model)
        self.keep_modifiers = keep_modifiers
        self._fallback = RuleNounExtractor(keep_modifiers)

    def __call__(self, caption: str) -> NounPhrase:
        doc = self.nlp(caption)
        chunks = list(doc.noun_chunks)
        if not chunks:
            return self._fallback(caption)
        roots = [c for c in chunks if c.root.dep_ == "ROOT"]
        chunk = (roots or chunks)[0]
        head = chunk.root.text.lower()
        return NounPhrase(chunk.text.lower() if self.keep_modifiers else head, head)


def build_noun_extractor(kind: str = "auto", keep_modifiers: bool = True,
                         spacy_model: str = "en_core_web_sm") -> NounExtractor:
    """``kind``: ``rule``, ``spacy`` (error if unavailable) or ``auto`` (spaCy if importable with the model)."""
    if kind == "rule":
        return RuleNounExtractor(keep_modifiers)
    if kind in ("spacy", "auto"):
        try:
            return SpacyNounExtractor(spacy_model, keep_modifiers)
        except (ImportError, OSError) as exc:
            if kind == "spacy":
                raise ImportError(f"noun extractor 'spacy' needs spaCy and the model {spacy_model!r}: {exc}") from exc
            return RuleNounExtractor(keep_modifiers)
    raise ValueError(f"unknown noun extractor {kind!r}; choose rule, spacy or auto")


def noun_prompt(noun_phrase: str, template: str = "a photo of {}") -> str:
    """"a photo of a {n}", or "a photo of {n}" when n already starts with an article or another
    determiner / number ("a photo of two dogs")."""
    n = noun_phrase.strip()
    first = n.split(" ", 1)[0].lower() if n else ""
    return template.format(n if first in DETERMINERS else f"a {n}")
