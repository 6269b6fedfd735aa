"""Small PNG plots drawn with PIL (matplotlib is not a dependency): histograms, line charts, a label gallery.

Used by the reproduction (`ris_models.reproduction`) for the DoC histogram of kept vs rejected candidates,
learning curves from Lightning's CSV logger, and a pseudo-label gallery. Files are written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pseudo_ris.data.io import atomic_write_bytes

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
_FONT = ImageFont.load_default()


def save_png(image: Image.Image, path: str | Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


class _Axes:
    """Maps data coordinates to pixels inside a plot frame, and draws the frame, ticks and labels."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], xlim: tuple[float, float],
                 ylim: tuple[float, float]) -> None:
        self.draw, self.box = draw, box
        self.xlim = xlim if xlim[1] > xlim[0] else (xlim[0] - 0.5, xlim[0] + 0.5)
        self.ylim = ylim if ylim[1] > ylim[0] else (ylim[0] - 0.5, ylim[0] + 0.5)

    def px(self, x: float, y: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        fx = (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    def frame(self, title: str, xlabel: str, ylabel: str, n_ticks: int = 5) -> None:
        x0, y0, x1, y1 = self.box
        d = self.draw
        d.rectangle(self.box, outline=(0, 0, 0))
        for k in range(n_ticks + 1):
            xv = self.xlim[0] + k * (self.xlim[1] - self.xlim[0]) / n_ticks
            yv = self.ylim[0] + k * (self.ylim[1] - self.ylim[0]) / n_ticks
            px, _ = self.px(xv, self.ylim[0])
            _, py = self.px(self.xlim[0], yv)
            d.line([(px, y1), (px, y1 + 4)], fill=(0, 0, 0))
            d.text((px - 12, y1 + 6), _tick(xv), fill=(0, 0, 0), font=_FONT)
            d.line([(x0 - 4, py), (x0, py)], fill=(0, 0, 0))
            d.line([(x0 + 1, py), (x1 - 1, py)], fill=(235, 235, 235))
            d.text((4, py - 6), _tick(yv), fill=(0, 0, 0), font=_FONT)
        d.text((x0, 6), title, fill=(0, 0, 0), font=_FONT)
        d.text(((x0 + x1) // 2 - 3 * len(xlabel), y1 + 22), xlabel, fill=(0, 0, 0), font=_FONT)
        d.text((4, y0 - 16), ylabel, fill=(0, 0, 0), font=_FONT)

    def legend(self, labels: Sequence[str]) -> None:
        x0, y0, x1, _ = self.box
        for i, label in enumerate(labels):
            y = y0 + 6 + 14 * i
            self.draw.rectangle([x1 + 10, y, x1 + 20, y + 10], fill=PALETTE[i % len(PALETTE)])
            self.draw.text((x1 + 25, y - 1), label[:26], fill=(0, 0, 0), font=_FONT)


def _tick(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.2g}" if abs(v) < 0.01 or abs(v) >= 1e4 else f"{v:.3g}"


def histogram_png(groups: Mapping[str, Sequence[float]], path: str | Path, *, bins: int = 30, title: str = "",
                  xlabel: str = "", size: tuple[int, int] = (800, 400)) -> Path:
    """Overlaid step histograms of each group (same bins), counts on the y axis; non-finite values are dropped."""
    clean = {k: np.asarray([v for v in vals if v is not None and math.isfinite(v)], float)
             for k, vals in groups.items()}
    allv = np.concatenate([v for v in clean.values() if len(v)] or [np.zeros(1)])
    edges = np.linspace(allv.min(), allv.max() if allv.max() > allv.min() else allv.min() + 1, bins + 1)
    counts = {k: np.histogram(v, edges)[0] for k, v in clean.items()}
    top = max([c.max() for c in counts.values() if len(c)] + [1])
    img = Image.new("RGB", size, (255, 255, 255))
    ax = _Axes(ImageDraw.Draw(img), (60, 30, size[0] - 180, size[1] - 50), (edges[0], edges[-1]), (0, top * 1.05))
    for i, (label, c) in enumerate(counts.items()):
        pts = []
        for b, n in enumerate(c):
            pts += [ax.px(edges[b], n), ax.px(edges[b + 1], n)]
        pts = [ax.px(edges[0], 0)] + pts + [ax.px(edges[-1], 0)]
        ax.draw.line(pts, fill=PALETTE[i % len(PALETTE)], width=2)
    ax.frame(title, xlabel, "count")
    ax.legend([f"{k} (n={len(v)})" for k, v in clean.items()])
    return save_png(img, path)


def line_chart_png(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
                   title: str = "", xlabel: str = "", ylabel: str = "", size: tuple[int, int] = (800, 400)) -> Path:
    """One polyline (with dots) per series of ``(xs, ys)``."""
    xs = [x for s in series.values() for x in s[0]] or [0.0, 1.0]
    ys = [y for s in series.values() for y in s[1] if math.isfinite(y)] or [0.0, 1.0]
    img = Image.new("RGB", size, (255, 255, 255))
    ax = _Axes(ImageDraw.Draw(img), (60, 30, size[0] - 180, size[1] - 50), (min(xs), max(xs)),
               (min(ys), max(ys) + 1e-9))
    for i, (_, (sx, sy)) in enumerate(series.items()):
        pts = [ax.px(x, y) for x, y in zip(sx, sy) if math.isfinite(y)]
        colour = PALETTE[i % len(PALETTE)]
        if len(pts) > 1:
            ax.draw.line(pts, fill=colour, width=2)
        if len(pts) <= 40:
            for px, py in pts:
                ax.draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
    ax.frame(title, xlabel, ylabel)
    ax.legend(list(series))
    return save_png(img, path)


def read_metrics_csv(path: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """Lightning CSVLogger ``metrics.csv`` -> ``{column: (steps, values)}`` for every numeric column but step/epoch."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            step = row.get("step")
            if step in (None, ""):
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                xs, ys = out.setdefault(key, ([], []))
                xs.append(float(step))
                ys.append(v)
    return out


def smooth(values: Sequence[float], window: int = 5) -> list[float]:
    """Trailing moving average (noisy per-step losses)."""
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(float(np.mean(acc)))
    return out


def _overlay(image: np.ndarray, mask: np.ndarray, colour=(255, 255, 0)) -> np.ndarray:
    """Dim everything outside the mask and outline it, so the labelled object stands out."""
    out = image.astype(np.float32).copy()
    out[~mask] *= 0.35
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    out[mask & ~inner] = colour
    return out.clip(0, 255).astype(np.uint8)


def gallery_png(entries: Sequence[dict], path: str | Path, *, tile: int = 200, columns: int = 4,
                text_lines: int = 4) -> Path:
    """Grid of tiles: ``entry = {"image": uint8 [H,W,3], "mask": bool [H,W], "lines": [str, ...]}``, the mask tinted
    red and the lines (e.g. kept captions with a mark) written under it."""
    rows = max(1, math.ceil(len(entries) / columns))
    cell_h = tile + 12 * text_lines + 6
    canvas = Image.new("RGB", (columns * (tile + 8) + 8, rows * (cell_h + 8) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, e in enumerate(entries):
        r, c = divmod(k, columns)
        x, y = 8 + c * (tile + 8), 8 + r * (cell_h + 8)
        pic = Image.fromarray(_overlay(e["image"], e["mask"])).resize((tile, tile), Image.NEAREST)
        canvas.paste(pic, (x, y))
        for i, line in enumerate(list(e.get("lines", []))[:text_lines]):
            colour = (0, 110, 0) if line.startswith("+") else ((170, 0, 0) if line.startswith("-") else (0, 0, 0))
            draw.text((x, y + tile + 3 + 12 * i), line[: tile // 6], fill=colour, font=_FONT)
    return save_png(canvas, path)
