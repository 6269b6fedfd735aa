"""Spatial semantics shared by the expression generator and the grounding oracle.

One definition of "left", "above", "next to" ... used on both sides, so every generated expression grounds to its
target by construction. Objects are dicts with at least ``bbox`` = COCO ``[x, y, w, h]``; positions are bbox centres.

Two strengths: the oracle uses the *loose* reading (everything a listener could reasonably pick), the generator
only emits a location/relation when the target satisfies the *strict* reading and every other candidate fails even
the loose one, so generated text is unambiguous with a safety margin.

Absolute locations are relative to the candidates that fit the rest of the description ("the red circle on the
left" = the leftmost red circle), as people use them in RefCOCO.
"""

from __future__ import annotations

import math
from typing import Sequence

LOCATION_MARGIN = 0.06   # fraction of the image side: how far ahead the extreme candidate must be
RELATION_MARGIN = 0.04   # minimum displacement for left_of/right_of/above/below
NEAR_MAX_STRICT = 0.40   # "next to": max centre distance (fraction of the side) the generator uses
NEAR_MAX_LOOSE = 0.55    # ... and the oracle accepts


def center(obj: dict) -> tuple[float, float]:
    x, y, w, h = obj["bbox"]
    return float(x) + float(w) / 2.0, float(y) + float(h) / 2.0


def _loc_score(obj: dict, loc: str, middle_x: float) -> float:
    """Smaller = more <loc>."""
    cx, cy = center(obj)
    if loc == "left":
        return cx
    if loc == "right":
        return -cx
    if loc == "top":
        return cy
    if loc == "bottom":
        return -cy
    if loc == "middle":
        return abs(cx - middle_x)
    raise KeyError(f"unknown location {loc!r}")


def _middle_x(objects: Sequence[dict], cands: Sequence[int], image_size: float) -> float:
    """"The middle one" of a row of >= 3 is the horizontal median; of fewer, the one nearest the image centre."""
    if len(cands) < 3:
        return image_size / 2.0
    xs = sorted(center(objects[i])[0] for i in cands)
    k = len(xs) // 2
    return float(xs[k]) if len(xs) % 2 else (xs[k - 1] + xs[k]) / 2.0


def _in_image_region(obj: dict, loc: str, image_size: float) -> bool:
    """Generous absolute reading (used for a lone candidate): "left" = not in the right 40% of the image, ..."""
    cx, cy = (v / image_size for v in center(obj))
    return {"left": cx <= 0.6, "right": cx >= 0.4, "top": cy <= 0.6, "bottom": cy >= 0.4,
            "middle": abs(cx - 0.5) <= 0.25 and abs(cy - 0.5) <= 0.25}[loc]


def select_location(objects: Sequence[dict], cands: Sequence[int], loc: str, image_size: float) -> list[int]:
    """Loose reading: the candidates within ``LOCATION_MARGIN`` of the most-<loc> one."""
    if not cands:
        return []
    if len(cands) == 1:  # nothing to compare with: the word must at least fit the object's place in the image
        return [i for i in cands if _in_image_region(objects[i], loc, image_size)]
    ref = _middle_x(objects, cands, image_size)
    scores = {i: _loc_score(objects[i], loc, ref) for i in cands}
    best = min(scores.values())
    m = LOCATION_MARGIN * image_size
    return [i for i in cands if scores[i] <= best + m]


def location_is_distinct(objects: Sequence[dict], cands: Sequence[int], target: int, loc: str,
                         image_size: float) -> bool:
    """Strict reading: the target is the most-<loc> candidate by at least twice the margin."""
    if target not in cands:
        return False
    if loc == "middle" and len(cands) != 3:
        return False  # "the middle one" is said of a group of three
    if len(cands) < 2:
        return False  # a location that does not discriminate is not minimal
    ref = _middle_x(objects, cands, image_size)
    t = _loc_score(objects[target], loc, ref)
    m = 2 * LOCATION_MARGIN * image_size
    return all(_loc_score(objects[i], loc, ref) > t + m for i in cands if i != target)


def _direction(t: dict, a: dict, rel: str) -> tuple[float, float]:
    """(along, across): displacement of t from a in the relation's direction, and the perpendicular size."""
    tx, ty = center(t)
    ax, ay = center(a)
    dx, dy = ax - tx, ay - ty  # positive dx: t is left of a; positive dy: t is above a
    if rel == "left_of":
        return dx, abs(dy)
    if rel == "right_of":
        return -dx, abs(dy)
    if rel == "above":
        return dy, abs(dx)
    if rel == "below":
        return -dy, abs(dx)
    raise KeyError(f"not a directional relation: {rel!r}")


def directional_holds(t: dict, a: dict, rel: str, image_size: float, strict: bool) -> bool:
    along, across = _direction(t, a, rel)
    if strict:  # within ~34 degrees of the direction
        return along > 2 * RELATION_MARGIN * image_size and along >= 1.5 * across
    return along > RELATION_MARGIN * image_size and along >= 0.8 * across  # within ~51 degrees


def _dist(a: dict, b: dict) -> float:
    (ax, ay), (bx, by) = center(a), center(b)
    return math.hypot(ax - bx, ay - by)


def select_relation(objects: Sequence[dict], cands: Sequence[int], anchors: Sequence[int], rel: str,
                    image_size: float) -> list[int]:
    """Loose reading: candidates (not anchors themselves) that stand in ``rel`` to at least one anchor."""
    cands = [i for i in cands if i not in set(anchors)]
    out: set[int] = set()
    for a in anchors:
        if rel == "next_to":
            near = [i for i in cands if _dist(objects[i], objects[a]) <= NEAR_MAX_LOOSE * image_size]
            if near:
                best = min(_dist(objects[i], objects[a]) for i in near)
                out.update(i for i in near
                           if _dist(objects[i], objects[a]) <= best + LOCATION_MARGIN * image_size)
        else:
            out.update(i for i in cands if directional_holds(objects[i], objects[a], rel, image_size, strict=False))
    return [i for i in cands if i in out]


def relation_is_distinct(objects: Sequence[dict], cands: Sequence[int], target: int, anchor: int, rel: str,
                         image_size: float) -> bool:
    """Strict reading for the target, and no other candidate fits even the loose reading."""
    others = [i for i in cands if i not in (target, anchor)]
    if target == anchor or target not in cands:
        return False
    if rel == "next_to":
        d_t = _dist(objects[target], objects[anchor])
        if d_t > NEAR_MAX_STRICT * image_size:
            return False
        return all(_dist(objects[i], objects[anchor]) > d_t + 2 * LOCATION_MARGIN * image_size for i in others)
    if not directional_holds(objects[target], objects[anchor], rel, image_size, strict=True):
        return False
    return not any(directional_holds(objects[i], objects[anchor], rel, image_size, strict=False) for i in others)


def relation_holds_strict(objects: Sequence[dict], target: int, anchor: int, rel: str, image_size: float) -> bool:
    """Strict reading for the target alone (used to add a true but non-necessary relation, RefCOCOg style)."""
    if rel == "next_to":
        return _dist(objects[target], objects[anchor]) <= NEAR_MAX_STRICT * image_size
    return directional_holds(objects[target], objects[anchor], rel, image_size, strict=True)
