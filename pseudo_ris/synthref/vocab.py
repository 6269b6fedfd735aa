"""SynthRef word lists: the single source of truth for shapes, colours, sizes, locations and relations.

Scene rendering, expression generation, the grounding oracle, the tiny captioner's word vocabulary and the
text filters all import these lists, so a word added here is known everywhere at once.
"""

from __future__ import annotations

# --- shapes (= COCO categories) -------------------------------------------------------------------------------
# Two families split testA / testB the way RefCOCO splits people / other objects: the *target's* family decides.
CURVED_SHAPES: tuple[str, ...] = ("circle", "ring", "heart", "crescent")
ANGULAR_SHAPES: tuple[str, ...] = ("square", "triangle", "star", "cross", "hexagon")
SHAPES: tuple[str, ...] = CURVED_SHAPES + ANGULAR_SHAPES
SHAPE_FAMILIES: dict[str, tuple[str, ...]] = {"curved": CURVED_SHAPES, "angular": ANGULAR_SHAPES}
#: split name -> target shape family (RefCOCO testA = people, testB = other objects)
TEST_SPLIT_FAMILIES: dict[str, str] = {"testA": "curved", "testB": "angular"}

#: words a human or a captioner may use for a shape; every synonym maps back to the canonical shape
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "circles", "disc", "disk", "dot", "dots", "ball"),
    "ring": ("ring", "rings", "donut", "doughnut", "hoop", "annulus"),
    "heart": ("heart", "hearts"),
    "crescent": ("crescent", "crescents", "moon", "moons"),
    "square": ("square", "squares", "box", "block", "rectangle"),
    "triangle": ("triangle", "triangles"),
    "star": ("star", "stars"),
    "cross": ("cross", "crosses", "plus"),
    "hexagon": ("hexagon", "hexagons", "hex"),
}
#: nouns that name "some object" without saying which shape (they match every shape)
GENERIC_NOUNS: tuple[str, ...] = ("shape", "shapes", "object", "objects", "thing", "things", "item", "one",
                                  "figure", "form", "symbol", "sign")

# --- colours ------------------------------------------------------------------------------------------------------
# Saturated and far apart in RGB; backgrounds are low-saturation so colour is always readable.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (214, 36, 36),
    "orange": (246, 138, 22),
    "yellow": (236, 216, 40),
    "green": (38, 158, 58),
    "cyan": (36, 202, 214),
    "blue": (38, 70, 212),
    "purple": (132, 48, 182),
    "pink": (246, 118, 192),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red",), "orange": ("orange",), "yellow": ("yellow",), "green": ("green",),
    "cyan": ("cyan", "turquoise", "teal"), "blue": ("blue",), "purple": ("purple", "violet"),
    "pink": ("pink", "magenta"),
}

# --- sizes --------------------------------------------------------------------------------------------------------
# Absolute: a "big" object's radius is about twice a "small" one's (see SceneConfig), so size is judgeable from
# the whole image and from crops that keep scale.
SIZES: tuple[str, ...] = ("small", "big")
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny", "smaller", "smallest"),
    "big": ("big", "large", "huge", "bigger", "biggest", "larger", "largest"),
}

# --- absolute locations (relative to the other objects that fit the rest of the description) ----------------------
LOCATIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "middle")
LOCATION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "left": ("left", "leftmost"),
    "right": ("right", "rightmost"),
    "top": ("top", "topmost", "upper", "uppermost"),
    "bottom": ("bottom", "bottommost", "lower", "lowest", "lowermost"),
    "middle": ("middle", "center", "centre", "central"),
}
#: every word that states an absolute location; RefCOCO+-style text (synthref+) never contains any of them
ABSOLUTE_LOCATION_WORDS: frozenset[str] = frozenset(w for ws in LOCATION_SYNONYMS.values() for w in ws)

# --- relations to another object ----------------------------------------------------------------------------------
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below", "next_to")
#: multi-word phrases first (longest match wins when parsing). "left"/"right" appear here only inside "of" phrases.
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left_of": ("to the left of", "on the left of", "left of"),
    "right_of": ("to the right of", "on the right of", "right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "underneath", "beneath"),
    "next_to": ("next to", "beside", "near", "close to", "by"),
}
#: relation words usable in RefCOCO+-style text (no absolute-location word inside the phrase)
PLUS_RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left_of": ("left of",), "right_of": ("right of",),
    "above": ("above", "over"), "below": ("below", "under", "beneath"),
    "next_to": ("next to", "beside", "near"),
}

ARTICLES: tuple[str, ...] = ("a", "an", "the")


def shape_family(shape: str) -> str:
    """Family ("curved"/"angular") of a canonical shape name."""
    for family, members in SHAPE_FAMILIES.items():
        if shape in members:
            return family
    raise KeyError(f"unknown SynthRef shape {shape!r}; known: {', '.join(SHAPES)}")


def all_words() -> list[str]:
    """Every content word SynthRef text can contain (for building small word vocabularies)."""
    words: set[str] = set(ARTICLES) | set(GENERIC_NOUNS)
    for table in (SHAPE_SYNONYMS, COLOUR_SYNONYMS, SIZE_SYNONYMS, LOCATION_SYNONYMS):
        for ws in table.values():
            words.update(ws)
    for phrases in RELATION_PHRASES.values():
        for p in phrases:
            words.update(p.split())
    words.update(["that", "is", "and", "on", "of", "in", "at", "to", "picture", "image", "photo", "which", "with",
                  "one", "side", "shown", "colored", "coloured", "sized"])
    return sorted(words)
