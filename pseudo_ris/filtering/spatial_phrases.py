"""Spatial phrases for pseudo expressions: "the red circle on the left", "the bigger square".

Captioners describe a crop, so their captions rarely say where an object is or how big it is compared with the others,
while people do (a fifth of RefCOCO-style expressions need it). This optional step adds such phrases from the masks of
one image, never from ground truth: a phrase is proposed for a caption of mask ``m`` only when it singles ``m`` out
among the image's masks that share the caption's head noun ("circle"), with a safety margin. The new texts are then
scored by the same DoC filter as every other candidate, so the filter still decides what is kept.

Which masks share a noun: each mask's majority head noun over its own caption candidates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

ARTICLES = frozenset({"a", "an", "the", "one"})
LOCATION_WORDS = frozenset({"left", "right", "top", "bottom", "middle", "leftmost", "rightmost", "upper", "lower"})
#: caption tails that say nothing about the object ("a red circle in the picture"); dropped before a phrase is added
FILLER_TAILS = ("in the picture", "in the photo", "in the image")
SIZE_WORDS = frozenset({"small", "big", "large", "little", "tiny", "huge", "smaller", "bigger", "larger", "smallest",
                        "biggest", "largest"})


@dataclass(frozen=True)
class SpatialConfig:
    """``margin``: the target's centre must lead every other same-noun mask by this fraction of the image side;
    ``size_ratio``: "bigger" needs an area at least this many times every other one's ("smaller": at most 1/ratio);
    ``max_texts_per_mask``: the mask's best distinct captions (by DoC) that get phrases."""

    enabled: bool = False
    location: bool = True
    size: bool = True
    margin: float = 0.05
    size_ratio: float = 1.5
    max_texts_per_mask: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 0.5:
            raise ValueError(f"spatial.margin must be in [0, 0.5), got {self.margin}")
        if self.size_ratio <= 1.0:
            raise ValueError(f"spatial.size_ratio must be > 1, got {self.size_ratio}")
        if self.max_texts_per_mask < 1:
            raise ValueError(f"spatial.max_texts_per_mask must be >= 1, got {self.max_texts_per_mask}")


@dataclass(frozen=True)
class Proposal:
    mask_index: int
    source: int  # index of the candidate row the phrase extends
    kind: str    # location | size
    text: str


def _center(bbox: Sequence[float]) -> tuple[float, float]:
    x, y, w, h = (float(v) for v in bbox)
    return x + w / 2.0, y + h / 2.0


def distinguishing_phrases(target: int, group: Sequence[int], bboxes: Sequence[Sequence[float]],
                           areas: Sequence[float], width: int, height: int,
                           cfg: SpatialConfig) -> list[tuple[str, str]]:
    """``[(kind, phrase)]`` that single out ``target`` among ``group`` (indices into bboxes/areas; target included).

    Empty when the group has no other member: the caption's noun alone already refers."""
    others = [j for j in group if j != target]
    if not others:
        return []
    out: list[tuple[str, str]] = []
    tx, ty = _center(bboxes[target])
    centers = [_center(bboxes[j]) for j in others]
    if cfg.location:
        mx, my = cfg.margin * width, cfg.margin * height
        if all(tx + mx < cx for cx, _ in centers):
            out.append(("location", "on the left"))
        if all(tx - mx > cx for cx, _ in centers):
            out.append(("location", "on the right"))
        if all(ty + my < cy for _, cy in centers):
            out.append(("location", "at the top"))
        if all(ty - my > cy for _, cy in centers):
            out.append(("location", "at the bottom"))
    if cfg.size:
        many = len(others) > 1
        if all(float(areas[target]) >= cfg.size_ratio * float(areas[j]) for j in others):
            out.append(("size", "biggest" if many else "bigger"))
        if all(float(areas[target]) * cfg.size_ratio <= float(areas[j]) for j in others):
            out.append(("size", "smallest" if many else "smaller"))
    return out


def apply_phrase(text: str, kind: str, phrase: str) -> str | None:
    """"a red circle" + location "on the left" -> "the red circle on the left"; + size "bigger" -> "the bigger red
    circle". None when the caption already states that kind of fact (no "the smaller small circle")."""
    words = text.strip().split()
    if words and words[0].lower() in ARTICLES:
        words = words[1:]
    if not words:
        return None
    body = " ".join(words)
    for tail in FILLER_TAILS:
        if body.lower().endswith(" " + tail):
            words = body[: -len(tail) - 1].split()
            break
    lowered = {w.lower().strip(",.") for w in words}
    if lowered & (LOCATION_WORDS if kind == "location" else SIZE_WORDS):
        return None
    body = " ".join(words)
    return f"the {body} {phrase}" if kind == "location" else f"the {phrase} {body}"


def majority_nouns(mask_indices: Sequence[int], heads: Sequence[str]) -> dict[int, str]:
    """Each mask's most frequent head noun over its candidates (ties: alphabetical, so the choice is stable)."""
    counts: dict[int, Counter] = {}
    for m, head in zip(mask_indices, heads):
        counts.setdefault(int(m), Counter())[head] += 1
    return {m: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for m, c in counts.items()}


def propose(rows: Sequence[Mapping], heads: Sequence[str], bboxes: Sequence[Sequence[float]],
            areas: Sequence[float], width: int, height: int, cfg: SpatialConfig) -> list[Proposal]:
    """Spatial variants of the best captions of every mask of one image.

    ``rows``: the image's scored candidate rows (``mask_index``, ``text``, ``doc``, ``correctness``); ``heads``: each
    row's head noun; ``bboxes``/``areas``: per mask (COCO ``[x, y, w, h]``, pixels)."""
    if not cfg.enabled or not rows:
        return []
    nouns = majority_nouns([r["mask_index"] for r in rows], heads)
    best: dict[int, list[int]] = {}
    order = sorted(range(len(rows)), key=lambda k: (-_score(rows[k]), k))
    for k in order:
        m = int(rows[k]["mask_index"])
        chosen = best.setdefault(m, [])
        if len(chosen) < cfg.max_texts_per_mask and all(rows[c]["text"] != rows[k]["text"] for c in chosen):
            chosen.append(k)
    out: list[Proposal] = []
    seen: set[tuple[int, str]] = set()
    for m in sorted(best):
        for k in best[m]:
            group = sorted({j for j, noun in nouns.items() if noun == heads[k]} | {m})
            for kind, phrase in distinguishing_phrases(m, group, bboxes, areas, width, height, cfg):
                text = apply_phrase(rows[k]["text"], kind, phrase)
                if text is not None and (m, text) not in seen:
                    seen.add((m, text))
                    out.append(Proposal(m, k, kind, text))
    return out


def _score(row: Mapping) -> float:
    value = row.get("doc")
    if value is None:
        value = row.get("correctness")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("-inf")
    return value if value == value else float("-inf")  # NaN last
