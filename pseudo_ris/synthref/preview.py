"""Human-facing views of SynthRef: an example grid (PNG, drawn with PIL only) and a text summary table."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pseudo_ris.data.io import atomic_write_bytes
from pseudo_ris.synthref.build import LABELLED_DATASETS, must_name_attributes, scene_for_split
from pseudo_ris.synthref.config import SynthRefConfig
from pseudo_ris.synthref.expressions import generate_expressions
from pseudo_ris.synthref.scene import erode_mask

_PREVIEW_STREAM = 7


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


def preview_grid(cfg: SynthRefConfig | None = None, count: int = 6, columns: int = 3, scale: int = 3) -> Image.Image:
    """Scenes with one target outlined and its synthref / synthref+ / synthrefg expressions as the title."""
    cfg = SynthRefConfig.from_any(cfg)
    size = cfg.scene.image_size
    tile = size * scale
    font = _font(15)
    small = _font(13)
    cells: list[Image.Image] = []
    index = 0
    while len(cells) < count and index < 200:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _PREVIEW_STREAM, index]))
        index += 1
        split = "unseen" if len(cells) == count - 1 else "train"  # last tile shows a held-out concept
        scene = scene_for_split(rng, cfg, split)
        objects = [o.as_oracle_object() for o in scene.objects]
        # prefer targets that share their shape with another object: the interesting, distinctive case
        order = sorted(range(len(objects)), key=lambda i: -sum(o["shape"] == objects[i]["shape"] for o in objects))
        if split == "unseen":
            order = [i for i in order if objects[i]["shape"] in cfg.held_out_shapes
                     or objects[i]["colour"] in cfg.held_out_colours]
        for t in order:
            texts = {name: generate_expressions(objects, t, style, rng, size, 1, 1,
                                                must_name=must_name_attributes(objects[t], split, cfg))
                     for name, (style, _) in LABELLED_DATASETS.items()}
            if all(texts.values()):
                break
        else:
            continue
        img = Image.fromarray(scene.image).resize((tile, tile), Image.NEAREST)
        mask = np.asarray(Image.fromarray(scene.objects[t].mask.astype(np.uint8) * 255).resize(
            (tile, tile), Image.NEAREST)) > 0
        edge = mask & ~erode_mask(erode_mask(erode_mask(mask)))
        arr = np.asarray(img).copy()
        arr[edge] = (255, 255, 255)
        outer = erode_mask(erode_mask(~mask)) ^ ~mask  # dark halo just outside, visible on light backgrounds
        arr[outer] = (0, 0, 0)
        header_h = 86
        cell = Image.new("RGB", (tile, tile + header_h), (255, 255, 255))
        draw = ImageDraw.Draw(cell)
        y = 4
        lines = [(f"synthref: {texts['synthref'][0]}", font)]
        lines.append((f"synthref+: {texts['synthref+'][0]}", small))
        lines.append((f"synthrefg: {texts['synthrefg'][0]}", small))
        if split == "unseen":
            lines[0] = (f"[unseen] {texts['synthref'][0]}", font)
        for text, f in lines:
            for line in _wrap(draw, text, f, tile - 8)[:2]:
                draw.text((4, y), line, fill=(0, 0, 0), font=f)
                y += int(f.size if hasattr(f, "size") else 12) + 3
        cell.paste(Image.fromarray(arr), (0, header_h))
        cells.append(cell)
    rows = (len(cells) + columns - 1) // columns
    w, h = cells[0].size
    grid = Image.new("RGB", (columns * w + (columns + 1) * 6, rows * h + (rows + 1) * 6), (200, 200, 200))
    for k, cell in enumerate(cells):
        grid.paste(cell, (6 + (k % columns) * (w + 6), 6 + (k // columns) * (h + 6)))
    return grid


def save_preview(path: str | Path, cfg: SynthRefConfig | None = None, count: int = 6) -> Path:
    """Write the example grid as PNG (atomically) and return its path."""
    buf = io.BytesIO()
    preview_grid(cfg, count=count).save(buf, format="PNG", optimize=True)
    return atomic_write_bytes(path, buf.getvalue())


def format_summary(summary: dict) -> str:
    """Plain-text table: dataset, split, images, refs, sentences."""
    rows = [("dataset", "split", "images", "refs", "sentences")]
    for name, per in summary.items():
        order = ["train", "val", "testA", "testB", "test", "unseen"]
        for split in sorted(per, key=lambda s: order.index(s) if s in order else len(order)):
            d = per[split]
            rows.append((name, split, str(d["images"]), str(d["refs"]), str(d["sentences"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(r))
                     for r in rows)
