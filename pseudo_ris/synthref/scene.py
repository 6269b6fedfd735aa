"""Procedural SynthRef scenes: coloured shapes with occlusion on textured backgrounds.

Everything is drawn from the ``np.random.Generator`` passed in, so a scene is a pure function of the rng state and
the config (the basis of SynthRef's byte-identical rebuilds). Masks are the *visible* parts of each object; objects
are placed one on top of the other and a placement is rejected when it would hide too much of an object below, so
every object stays recognisable.

Size is absolute: a "big" object's radius is ~2x a "small" one's (``small_radius`` / ``big_radius`` as fractions of
the image side, with a gap between the ranges), so "big"/"small" can be judged from the full image or from crops
that keep scale. Crops resized to a fixed size lose this, so the captioner must see context.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from pseudo_ris.data.masks import mask_to_bbox
from pseudo_ris.synthref.vocab import COLOUR_RGB, COLOURS, SHAPES, shape_family

BACKGROUNDS: tuple[str, ...] = ("noise", "stripes", "gradient", "checker")


@dataclass
class SceneConfig:
    """Everything that shapes a scene; part of the SynthRef cache key."""

    image_size: int = 128
    min_objects: int = 2
    max_objects: int = 8
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = COLOURS
    distractor_rate: float = 0.7        # P(a new object copies the shape of an object already placed)
    distractor_same_colour: float = 0.3  # P(such a distractor also copies the colour, so size/location must decide)
    big_rate: float = 0.5
    small_radius: tuple[float, float] = (0.055, 0.075)  # fraction of the image side
    big_radius: tuple[float, float] = (0.12, 0.16)
    max_rotation_deg: float = 15.0
    min_visible_frac: float = 0.6       # an object keeps at least this share of its own area visible
    min_visible_px: int = 30
    placement_tries: int = 30
    backgrounds: tuple[str, ...] = BACKGROUNDS
    colour_jitter: int = 14             # per-object RGB jitter (uniform +-)
    pixel_noise: float = 5.0            # per-pixel gaussian noise std on the whole image

    @classmethod
    def from_any(cls, cfg: "SceneConfig | Mapping[str, Any] | None") -> "SceneConfig":
        """Accept a SceneConfig, a dict / DictConfig (unknown keys rejected) or None (defaults)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        known = {f.name for f in fields(cls)}
        data = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        unknown = sorted(set(data) - known)
        if unknown:
            raise KeyError(f"unknown SceneConfig key(s) {unknown}; known: {sorted(known)}")
        out = {}
        for k, v in data.items():
            if k in ("shapes", "colours", "backgrounds", "small_radius", "big_radius"):
                v = tuple(v)
            out[k] = v
        return cls(**out)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class SceneObject:
    obj_id: int
    shape: str
    colour: str
    size: str                      # "small" | "big" (absolute radius class)
    mask: np.ndarray               # bool [H, W], visible part only
    bbox: list[float]              # COCO [x, y, w, h] of the visible mask
    depth: int                     # 0 = drawn first (bottom)
    full_area: int = 0             # area before occlusion
    radius: float = 0.0

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def attributes(self) -> dict:
        """JSON-safe attributes stored in the COCO annotation (read by the grounding oracle)."""
        x, y, w, h = self.bbox
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "family": shape_family(self.shape),
                "depth": int(self.depth), "visible_frac": round(self.area / max(self.full_area, 1), 4),
                "center": [round(x + w / 2.0, 2), round(y + h / 2.0, 2)]}

    def as_oracle_object(self) -> dict:
        return {**self.attributes(), "bbox": list(self.bbox)}


@dataclass
class Scene:
    image: np.ndarray              # uint8 [H, W, 3]
    objects: list[SceneObject]
    background: str
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# shape geometry: polygons in unit coordinates (radius 1, centred at 0), y pointing down
# ---------------------------------------------------------------------------------------------------------------

def _regular(n: int, phase: float) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], 1)


def _star() -> np.ndarray:
    a = -math.pi / 2 + math.pi * np.arange(10) / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], 1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max()


def _cross(w: float = 0.36) -> np.ndarray:
    return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w],
                     [-1, -w], [-w, -w]], dtype=float)


_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.82, -0.82], [0.82, -0.82], [0.82, 0.82], [-0.82, 0.82]]),
    "triangle": _regular(3, -math.pi / 2) * np.array([1.0, 1.0]) + np.array([0.0, 0.2]),
    "star": _star(),
    "heart": _heart(),
    "cross": _cross(),
    "hexagon": _regular(6, 0.0),
}


def _shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """Full (unoccluded) boolean mask of one shape."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    if shape in ("circle", "ring", "crescent"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            ri = 0.52 * r
            draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
        elif shape == "crescent":
            ox, oy = 0.45 * r * math.cos(angle * 6), 0.45 * r * math.sin(angle * 6)  # bite direction varies
            rb = 0.85 * r
            draw.ellipse([cx + ox - rb, cy + oy - rb, cx + ox + rb, cy + oy + rb], fill=0)
    elif shape in _POLYGONS:
        pts = _POLYGONS[shape]
        c, s = math.cos(angle), math.sin(angle)
        rot = pts @ np.array([[c, s], [-s, c]])
        xy = [(cx + r * px, cy + r * py) for px, py in rot]
        draw.polygon(xy, fill=255)
    else:
        raise KeyError(f"unknown SynthRef shape {shape!r}; known: {', '.join(SHAPES)}")
    return np.asarray(img) > 127


def erode_mask(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion (pixels on the image border count as interior)."""
    out = mask.copy()
    out[1:, :] &= mask[:-1, :]
    out[:-1, :] &= mask[1:, :]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


# ---------------------------------------------------------------------------------------------------------------
# backgrounds: low saturation so object colours stay readable
# ---------------------------------------------------------------------------------------------------------------

def _tone(rng: np.random.Generator) -> np.ndarray:
    v = rng.uniform(55, 195)
    tint = rng.uniform(-14, 14, size=3)
    return np.clip(v + tint, 0, 255)


def _background(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    a, b = _tone(rng), _tone(rng)
    if np.abs(a - b).mean() < 25:  # make the texture visible
        b = np.clip(a + rng.choice([-1, 1]) * 40, 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "noise":
        cells = int(rng.integers(3, 9))
        low = rng.random((cells, cells)).astype(np.float32)
        t = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                       dtype=np.float32) / 255.0
    elif kind == "stripes":
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(0.06, 0.2)
        proj = xx * math.cos(theta) + yy * math.sin(theta)
        t = ((proj / period) % 1.0 < 0.5).astype(np.float32)
    elif kind == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        proj = (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta)
        t = np.clip(proj / 1.42 + 0.5, 0, 1)
    elif kind == "checker":
        cell = rng.uniform(0.08, 0.25)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    else:
        raise KeyError(f"unknown SynthRef background {kind!r}; known: {', '.join(BACKGROUNDS)}")
    t = t[..., None]
    return (a * (1 - t) + b * t).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# scene sampling
# ---------------------------------------------------------------------------------------------------------------

def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def render_scene(rng: np.random.Generator, cfg: SceneConfig | Mapping[str, Any] | None = None, *,
                 shapes: Sequence[str] | None = None, colours: Sequence[str] | None = None,
                 first: Mapping[str, Sequence[str]] | None = None) -> Scene:
    """Sample and draw one scene.

    ``shapes`` / ``colours`` restrict the concepts used (e.g. no held-out concepts in human train images);
    ``first`` constrains the first object, e.g. ``{"shape": ["hexagon"]}`` or ``{"colour": ["pink"]}``, which then
    always survives (placements never hide more than ``1 - min_visible_frac`` of an earlier object).
    """
    cfg = SceneConfig.from_any(cfg)
    shapes = tuple(shapes) if shapes is not None else tuple(cfg.shapes)
    colours = tuple(colours) if colours is not None else tuple(cfg.colours)
    size = int(cfg.image_size)
    for _ in range(100):
        scene = _try_scene(rng, cfg, shapes, colours, first, size)
        if scene is not None:
            return scene
    raise RuntimeError("could not place at least min_objects objects in 100 attempts; "
                       "lower max radius or min_visible_frac in the SynthRef scene config")


def _try_scene(rng, cfg: SceneConfig, shapes, colours, first, size) -> Scene | None:
    n_target = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    specs: list[dict] = []  # placed objects: attributes, radius, full area, colour, rim pixels
    visible: list[np.ndarray] = []
    areas: list[int] = []  # visible area of each placed object
    for i in range(n_target):
        # --- attributes -------------------------------------------------------------------------------------
        if i == 0 and first:
            shape = _pick(rng, first["shape"]) if "shape" in first else _pick(rng, shapes)
            colour = _pick(rng, first["colour"]) if "colour" in first else _pick(rng, colours)
        elif specs and rng.random() < cfg.distractor_rate:
            ref = specs[int(rng.integers(len(specs)))]
            shape = ref["shape"]
            colour = ref["colour"] if rng.random() < cfg.distractor_same_colour else _pick(rng, colours)
        else:
            shape, colour = _pick(rng, shapes), _pick(rng, colours)
        big = bool(rng.random() < cfg.big_rate)
        lo, hi = cfg.big_radius if big else cfg.small_radius
        r = float(rng.uniform(lo, hi)) * size
        angle = math.radians(float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)))
        base = np.clip(np.array(COLOUR_RGB[colour], dtype=np.float32)
                       + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, size=3), 0, 255)
        # --- placement (new objects go on top; reject if an object below would lose too much) ----------------
        placed = False
        for _ in range(cfg.placement_tries):
            cx = float(rng.uniform(r, size - r))
            cy = float(rng.uniform(r, size - r))
            full = _shape_mask(shape, cx, cy, r, angle, size)
            area = int(full.sum())
            if area < cfg.min_visible_px:
                continue
            ok = True
            # only the new shape's box can change what is visible below it
            ext = 1.2 * r + 2  # polygons reach at most ~1.16 r from the centre (rotated square corners)
            y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 1, size)
            x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 1, size)
            window = full[y0:y1, x0:x1]
            for spec, vis, vis_area in zip(specs, visible, areas):
                left = vis_area - int(np.count_nonzero(vis[y0:y1, x0:x1] & window))
                if left < cfg.min_visible_frac * spec["full_area"] or left < cfg.min_visible_px:
                    ok = False
                    break
            if ok:
                placed = True
                break
        if not placed:
            if i == 0:
                return None
            continue
        visible = [vis & ~full for vis in visible]
        visible.append(full)
        areas = [int(np.count_nonzero(vis)) for vis in visible]
        specs.append({"shape": shape, "colour": colour, "size": "big" if big else "small", "radius": r,
                      "full_area": area, "rgb": base, "edge": full & ~erode_mask(full)})
    if len(specs) < cfg.min_objects:
        return None

    # --- draw ------------------------------------------------------------------------------------------------------
    kind = _pick(rng, cfg.backgrounds)
    canvas = _background(rng, kind, size)
    objects: list[SceneObject] = []
    for depth, (spec, vis) in enumerate(zip(specs, visible)):
        shade = float(np.clip(1.0 + 0.04 * rng.standard_normal(), 0.92, 1.08))  # slight brightness variation
        canvas[vis] = np.clip(spec["rgb"] * shade, 0, 255)
        # a darker rim separates touching objects of the same colour (the rim belongs to the object's mask)
        rim = vis & spec["edge"]
        canvas[rim] = canvas[rim] * 0.6
        objects.append(SceneObject(obj_id=depth, shape=spec["shape"], colour=spec["colour"], size=spec["size"],
                                   mask=vis, bbox=mask_to_bbox(vis), depth=depth, full_area=spec["full_area"],
                                   radius=round(spec["radius"], 3)))
    if cfg.pixel_noise > 0:
        canvas += np.float32(cfg.pixel_noise) * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(image=image, objects=objects, background=kind)
