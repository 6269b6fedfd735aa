"""Grounding oracle: which objects of a SynthRef scene could an expression refer to?

Pseudo-labels are judged against SynthRef's ground truth ("referential accuracy"): an expression is
*referential* when the objects it could refer to are exactly its target. The oracle parses text against the known
attributes of the scene's objects (shape incl. synonyms, colour, size, absolute location, relation to another
object) and ignores every word it does not know, so it reads both our generated expressions and captioner-style
text ("a photo of a blue star on the left", "red shape", "the circle").

Parsing, in short:

1. lower-case words; the first relation phrase ("left of", "above", "next to", ...) followed by an object noun
   splits the text into a target part and an anchor part; the anchor part is grounded recursively. A relation
   phrase not followed by an object noun ("on the left of the picture") is read as plain location words.
2. In the target part the head noun is the first shape word (else a generic noun: shape/object/thing/...);
   colour, size and location words from the start up to the next shape word describe it, later words describe
   something else and are ignored. Two different colours (or sizes, or shapes) in that span match nothing.
3. Candidates = objects whose shape/colour/size fit; a relation keeps those that stand in it to some anchor (anchors
   themselves excluded); each location word keeps the most-<location> candidates (``spatial.select_location``).

Spatial words use ``pseudo_ris.synthref.spatial``, the same semantics the expression generator uses, in their
*loose* reading (every object a listener could reasonably pick).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from pseudo_ris.synthref import spatial
from pseudo_ris.synthref.vocab import (COLOUR_SYNONYMS, GENERIC_NOUNS, LOCATION_SYNONYMS, RELATION_PHRASES,
                                       SHAPE_SYNONYMS, SIZE_SYNONYMS)


def _invert(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {word: key for key, words in table.items() for word in words}


_SHAPE_WORDS = _invert(SHAPE_SYNONYMS)
_COLOUR_WORDS = _invert(COLOUR_SYNONYMS)
_SIZE_WORDS = _invert(SIZE_SYNONYMS)
_LOCATION_WORDS = _invert(LOCATION_SYNONYMS)
_GENERIC = frozenset(GENERIC_NOUNS)
#: (tokens, relation), longest phrases first so "to the left of" wins over "left of"
_RELATION_TOKENS: list[tuple[tuple[str, ...], str]] = sorted(
    ((tuple(p.split()), rel) for rel, phrases in RELATION_PHRASES.items() for p in phrases),
    key=lambda item: -len(item[0]))
_REQUIRED_KEYS = ("shape", "colour", "size", "bbox")


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


@dataclass
class ParsedExpression:
    """What the oracle understood (for debugging and tests)."""

    shapes: set[str] = field(default_factory=set)   # empty = any shape
    colours: set[str] = field(default_factory=set)
    sizes: set[str] = field(default_factory=set)
    locations: list[str] = field(default_factory=list)
    relation: str | None = None
    anchor: "ParsedExpression | None" = None


def _is_noun(tok: str) -> bool:
    return tok in _SHAPE_WORDS or tok in _GENERIC


def _split_relation(tokens: list[str]) -> tuple[list[str], str | None, list[str]]:
    for i in range(len(tokens)):
        for phrase, rel in _RELATION_TOKENS:
            n = len(phrase)
            if tuple(tokens[i:i + n]) == phrase and any(_is_noun(t) for t in tokens[i + n:]):
                return tokens[:i], rel, tokens[i + n:]
    return tokens, None, []


def _parse_part(tokens: list[str]) -> ParsedExpression:
    shape_pos = [i for i, t in enumerate(tokens) if t in _SHAPE_WORDS]
    if shape_pos:
        head = shape_pos[0]
        end = next((i for i in shape_pos[1:] if _SHAPE_WORDS[tokens[i]] != _SHAPE_WORDS[tokens[head]]), len(tokens))
    else:
        end = len(tokens)
    span = tokens[:end]
    parsed = ParsedExpression()
    for tok in span:
        if tok in _SHAPE_WORDS:
            parsed.shapes.add(_SHAPE_WORDS[tok])
        elif tok in _COLOUR_WORDS:
            parsed.colours.add(_COLOUR_WORDS[tok])
        elif tok in _SIZE_WORDS:
            parsed.sizes.add(_SIZE_WORDS[tok])
        elif tok in _LOCATION_WORDS:
            loc = _LOCATION_WORDS[tok]
            if loc not in parsed.locations:
                parsed.locations.append(loc)
    return parsed


def parse_expression(expression: str | Sequence[str]) -> ParsedExpression:
    """Parse text (or tokens) into target attributes, locations and an optional relation to an anchor."""
    tokens = tokenize(expression) if isinstance(expression, str) else list(expression)
    target_tokens, relation, anchor_tokens = _split_relation(tokens)
    parsed = _parse_part(target_tokens)
    if relation is not None:
        parsed.relation = relation
        parsed.anchor = parse_expression(anchor_tokens)
    return parsed


def _check_objects(objects: Sequence[dict]) -> None:
    for i, obj in enumerate(objects):
        missing = [k for k in _REQUIRED_KEYS if k not in obj]
        if missing:
            raise KeyError(f"oracle object #{i} lacks keys {missing} (needs {list(_REQUIRED_KEYS)})")


def _ground(parsed: ParsedExpression, objects: Sequence[dict], image_size: float) -> list[int]:
    if len(parsed.shapes) > 1 or len(parsed.colours) > 1 or len(parsed.sizes) > 1:
        return []  # "a red and blue circle": no single object has both
    cands = [i for i, o in enumerate(objects)
             if (not parsed.shapes or o["shape"] in parsed.shapes)
             and (not parsed.colours or o["colour"] in parsed.colours)
             and (not parsed.sizes or o["size"] in parsed.sizes)]
    if parsed.relation is not None and parsed.anchor is not None:
        anchors = _ground(parsed.anchor, objects, image_size)
        if not anchors:
            return []
        cands = spatial.select_relation(objects, cands, anchors, parsed.relation, image_size)
    for loc in parsed.locations:
        cands = spatial.select_location(objects, cands, loc, image_size)
    return sorted(cands)


def ground_expression(expression: str, objects: Sequence[dict], image_size: float = 128) -> list[int]:
    """Indices of the objects ``expression`` could refer to.

    ``objects``: dicts with ``shape``, ``colour``, ``size`` and ``bbox`` (COCO ``[x, y, w, h]``), e.g. a SynthRef
    annotation's ``attributes`` merged with its ``bbox``. ``image_size``: side of the (square) image in pixels.
    """
    _check_objects(objects)
    return _ground(parse_expression(expression), objects, float(image_size))


def is_referential(expression: str, objects: Sequence[dict], target_index: int, image_size: float = 128) -> bool:
    """True when exactly the target (and nothing else) fits the expression."""
    return ground_expression(expression, objects, image_size) == [int(target_index)]


def objects_from_annotations(annotations: Sequence[dict]) -> list[dict]:
    """Oracle objects from SynthRef COCO annotations (``attributes`` + ``bbox``), in the given order."""
    out = []
    for ann in annotations:
        if "attributes" not in ann:
            raise KeyError(f"annotation {ann.get('id')} has no 'attributes' (not a SynthRef annotation?)")
        out.append({**ann["attributes"], "bbox": list(ann["bbox"])})
    return out
