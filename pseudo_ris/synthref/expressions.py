"""Human-style, distinctive referring expressions for SynthRef scenes.

A description is chosen the way RefCOCO annotators do it: the fewest words that single the target out among the
scene's objects. Preference order: shape alone; colour; size; colour and size; then an absolute location among the
objects that share the description ("the red circle on the left"); then a relation to another object that is
itself unique by appearance ("the circle above the green star"). Three styles:

* ``refcoco``  (dataset ``synthref``):  short, minimal, absolute locations allowed.
* ``refcoco+`` (dataset ``synthref+``): appearance and relations only, never an absolute-location word
  (no left/right/top/bottom/middle anywhere, so the relations are above/below/next to).
* ``refcocog`` (dataset ``synthrefg``): longer sentences: always size + colour + shape, often an extra relation,
  location/relations phrased in full ("on the left side of the picture").

Each ref gets 2-3 distinct paraphrases of the same description. Locations and relations use
``pseudo_ris.synthref.spatial``, the same semantics the grounding oracle uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pseudo_ris.synthref import spatial
from pseudo_ris.synthref.vocab import LOCATIONS, PLUS_RELATION_PHRASES, RELATION_PHRASES

STYLES: tuple[str, ...] = ("refcoco", "refcoco+", "refcocog")


@dataclass(frozen=True)
class Appearance:
    shape: str
    colour: str | None = None
    size: str | None = None

    def matches(self, obj: dict) -> bool:
        return (obj["shape"] == self.shape and (self.colour is None or obj["colour"] == self.colour)
                and (self.size is None or obj["size"] == self.size))


@dataclass(frozen=True)
class Description:
    target: Appearance
    location: str | None = None
    relation: str | None = None
    anchor: Appearance | None = None


def _appearance_options(obj: dict, full_only: bool, must_name: Sequence[str] = ()) -> list[Appearance]:
    s, c, z = obj["shape"], obj["colour"], obj["size"]
    if full_only:
        return [Appearance(s, c, z)]
    options = [Appearance(s), Appearance(s, c), Appearance(s, None, z), Appearance(s, c, z)]
    return [a for a in options if all(getattr(a, attr) is not None for attr in must_name)]


def _matching(objects: Sequence[dict], app: Appearance) -> list[int]:
    return [i for i, o in enumerate(objects) if app.matches(o)]


def minimal_appearance(objects: Sequence[dict], index: int, min_attrs: int = 0) -> Appearance | None:
    """Fewest appearance attributes that make ``objects[index]`` unique (None if appearance alone cannot)."""
    for app in _appearance_options(objects[index], False):
        n_attrs = (app.colour is not None) + (app.size is not None)
        if n_attrs >= min_attrs and _matching(objects, app) == [index]:
            return app
    return None


def describe(objects: Sequence[dict], target: int, style: str, rng: np.random.Generator, image_size: float,
             overspecify_rate: float = 0.15, extra_relation_rate: float = 0.5,
             must_name: Sequence[str] = ()) -> Description | None:
    """Pick a distinctive description of ``objects[target]`` in ``style``; None if none exists.

    ``must_name``: target attributes ("colour", "size") the text has to state even when not needed, e.g. the
    held-out colour of an ``unseen`` target (the split tests the concept, so the expression must name it).
    """
    if style not in STYLES:
        raise KeyError(f"unknown expression style {style!r}; known: {STYLES}")
    full_only = style == "refcocog"
    options = _appearance_options(objects[target], full_only, must_name)
    relations = [r for r in RELATION_PHRASES if style != "refcoco+" or r in PLUS_RELATION_PHRASES]
    if style == "refcoco+":
        relations = [r for r in relations if r not in ("left_of", "right_of")]

    # 1. appearance alone
    for k, app in enumerate(options):
        if _matching(objects, app) == [target]:
            if style != "refcocog" and k + 1 < len(options) and rng.random() < overspecify_rate:
                app = options[k + 1] if k == 0 else options[-1]  # people often add one word too many
            desc = Description(app)
            if style == "refcocog" and rng.random() < extra_relation_rate:
                desc = _add_true_relation(objects, target, desc, relations, rng, image_size) or desc
            return desc

    # 2. absolute location among the objects that share the description (not in RefCOCO+ style)
    if style != "refcoco+":
        for app in options:
            cands = _matching(objects, app)
            for loc in rng.permutation(LOCATIONS):
                if spatial.location_is_distinct(objects, cands, target, str(loc), image_size):
                    return Description(app, location=str(loc))

    # 3. a relation to another object that is unique by appearance
    anchors = []
    for j in rng.permutation(len(objects)):
        j = int(j)
        if j == target:
            continue
        anchor_app = minimal_appearance(objects, j, min_attrs=1 if style == "refcocog" else 0)
        if anchor_app is not None:
            anchors.append((j, anchor_app))
    for app in options:
        cands = _matching(objects, app)
        for j, anchor_app in anchors:
            for rel in rng.permutation(relations):
                if spatial.relation_is_distinct(objects, cands, target, j, str(rel), image_size):
                    return Description(app, relation=str(rel), anchor=anchor_app)
    return None


def _add_true_relation(objects, target, desc, relations, rng, image_size) -> Description | None:
    for j in rng.permutation(len(objects)):
        j = int(j)
        if j == target:
            continue
        anchor_app = minimal_appearance(objects, j, min_attrs=1)
        if anchor_app is None:
            continue
        for rel in rng.permutation(relations):
            if spatial.relation_holds_strict(objects, target, j, str(rel), image_size):
                return Description(desc.target, relation=str(rel), anchor=anchor_app)
    return None


# ---------------------------------------------------------------------------------------------------------------
# rendering descriptions as text
# ---------------------------------------------------------------------------------------------------------------

#: understood by the oracle but not generated ("on top of" reads as stacking, "by" is too vague)
_PARSE_ONLY_PHRASES = frozenset({"by", "on top of"})
_SIZE_WORDS = {"small": ("small", "small", "little"), "big": ("big", "big", "large")}
_LOC_SUFFIX = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
               "middle": "in the middle"}
_LOC_SUFFIX_LONG = {"left": "on the left side of the picture", "right": "on the right side of the picture",
                    "top": "at the top of the picture", "bottom": "at the bottom of the picture",
                    "middle": "in the middle of the picture"}
_LOC_PREFIX = {"left": ("left", "leftmost"), "right": ("right", "rightmost"), "top": ("top", "upper"),
               "bottom": ("bottom", "lower"), "middle": ("middle",)}


def _adj(app: Appearance, rng: np.random.Generator) -> str:
    words = []
    if app.size:
        words.append(str(rng.choice(_SIZE_WORDS[app.size])))
    if app.colour:
        words.append(app.colour)
    words.append(app.shape)
    return " ".join(words)


def _that(app: Appearance, rng: np.random.Generator) -> str | None:
    parts = []
    if app.size:
        parts.append(str(rng.choice(_SIZE_WORDS[app.size])))
    if app.colour:
        parts.append(app.colour)
    if not parts:
        return None
    return f"{app.shape} that is {' and '.join(parts)}"


def _variants(desc: Description, style: str, rng: np.random.Generator) -> list[str]:
    """All surface forms of one description in one style (duplicates removed later)."""
    arts = ("the", "a") if style == "refcocog" else ("the", "")
    adj = _adj(desc.target, rng)
    that = _that(desc.target, rng)
    nps = [adj] + ([that] if that else [])
    out: list[str] = []
    if desc.relation is not None:
        table = PLUS_RELATION_PHRASES if style == "refcoco+" else RELATION_PHRASES
        phrases = [p for p in table[desc.relation] if p not in _PARSE_ONLY_PHRASES]
        anchor = _adj(desc.anchor, rng)
        for _ in range(4):
            phrase = str(rng.choice(phrases))
            art = str(rng.choice(arts))
            out.append(f"{art} {adj} {phrase} the {anchor}")
            out.append(f"{art} {adj} that is {phrase} the {anchor}")
            if style == "refcocog":
                out.append(f"{art} {adj} which is {phrase} the {anchor}")
                if that:
                    out.append(f"{art} {that} and {phrase} the {anchor}")
    elif desc.location is not None:
        loc = desc.location
        for np_ in nps:
            for art in arts:
                if style == "refcocog":
                    out.append(f"{art} {np_} {_LOC_SUFFIX_LONG[loc]}")
                    out.append(f"{art} {np_} {_LOC_SUFFIX[loc]}")
                else:
                    out.append(f"{art} {np_} {_LOC_SUFFIX[loc]}")
        if style != "refcocog":
            for word in _LOC_PREFIX[loc]:
                out.append(f"the {word} {adj}")
    else:
        for np_ in nps:
            for art in arts:
                out.append(f"{art} {np_}")
        if style == "refcocog":
            out.append(f"a {adj} in the picture")
            out.append(f"the {adj} shown in the image")
        elif that is None:
            out.append(f"the {adj} shape")
    return [" ".join(t.split()) for t in out]


def paraphrases(desc: Description, style: str, rng: np.random.Generator, n_min: int = 2, n_max: int = 3) -> list[str]:
    """2-3 distinct sentences for one description (fewer only if the templates give fewer)."""
    pool = sorted(set(_variants(desc, style, rng)))
    n = int(rng.integers(n_min, n_max + 1))
    order = rng.permutation(len(pool))[:n]
    return [pool[int(i)] for i in sorted(order)]


def generate_expressions(objects: Sequence[dict], target: int, style: str, rng: np.random.Generator,
                         image_size: float, n_min: int = 2, n_max: int = 3, overspecify_rate: float = 0.15,
                         extra_relation_rate: float = 0.5, must_name: Sequence[str] = ()) -> list[str]:
    """Distinctive sentences for ``objects[target]`` (``[]`` when the style cannot single it out)."""
    desc = describe(objects, target, style, rng, image_size, overspecify_rate, extra_relation_rate, must_name)
    if desc is None:
        return []
    return paraphrases(desc, style, rng, n_min, n_max)
