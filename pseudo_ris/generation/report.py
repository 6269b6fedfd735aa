"""HTML gallery of the pseudo labels: per mask, the image with the mask outlined, the masked crop, and every
candidate caption with its scores, kept ones first and highlighted. One self-contained file (PNGs embedded)."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from pseudo_ris.data.io import atomic_write_text
from pseudo_ris.data.masks import rle_to_mask
from pseudo_ris.data.refer import load_rgb


def _png_b64(pixels: np.ndarray, max_side: int = 192) -> str:
    img = Image.fromarray(pixels)
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    elif scale > 1.5:  # tiny SynthRef crops: enlarge crisply
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32).copy()
    out[mask] = 0.5 * out[mask] + 0.5 * np.array([255, 40, 40])
    edge = mask ^ np.pad(mask, 1)[2:, 1:-1] | mask ^ np.pad(mask, 1)[:-2, 1:-1] | mask ^ np.pad(mask, 1)[1:-1, 2:]
    out[edge & mask] = (255, 255, 0)
    return out.clip(0, 255).astype(np.uint8)


def _masked_crop(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    crop = image.copy()
    crop[~mask] = (124, 117, 104)
    return crop[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def write_gallery(path: str | Path, images: list[dict], candidates: list[dict], image_dir: str | Path, *,
                  max_images: int = 20, max_candidates: int = 12, summary: dict | None = None) -> Path:
    """Write the gallery for the first ``max_images`` images that have masks (candidates need kept/reason)."""
    by_mask: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in candidates:
        by_mask[(r["key"], int(r["mask_index"]))].append(r)
    parts = ["<!doctype html><meta charset='utf-8'><title>Pseudo-RIS labels</title><style>",
             "body{font-family:sans-serif;margin:1em} .m{display:flex;gap:1em;border-top:1px solid #ccc;"
             "padding:.5em 0} table{border-collapse:collapse;font-size:12px} td,th{padding:1px 6px}"
             " .k{color:#060;font-weight:bold} .r{color:#888} img{image-rendering:pixelated}</style>",
             "<h1>Pseudo-label gallery</h1>"]
    if summary:
        skip = ("unreadable", "policy", "by_setting_view")
        parts.append("<pre>" + html.escape("\n".join(f"{k}: {v}" for k, v in summary.items() if k not in skip))
                     + "</pre>")
        if summary.get("policy"):
            parts.append(f"<p>policy: {html.escape(str(summary['policy']))}</p>")
        if summary.get("by_setting_view"):
            parts.append("<table><tr><th>setting/view</th><th>candidates</th><th>kept</th><th>kept frac</th>"
                         "<th>median DoC</th></tr>")
            for name, d in summary["by_setting_view"].items():
                parts.append(f"<tr><td>{html.escape(name)}</td><td>{d['candidates']}</td><td>{d['kept']}</td>"
                             f"<td>{d['kept_frac']:.2f}</td><td>{_fmt(d['median_doc'])}</td></tr>")
            parts.append("</table>")
        for u in summary.get("unreadable", []):
            parts.append(f"<p>unreadable: {html.escape(u['file_name'])} ({html.escape(u['error'])})</p>")
    shown = 0
    for img in sorted(images, key=lambda i: int(i["image_id"])):
        if shown >= max_images:
            break
        if img.get("status") != "ok":
            continue
        try:
            pixels = load_rgb(Path(image_dir) / img["file_name"])
        except Exception:  # the gallery never fails the run
            continue
        shown += 1
        parts.append(f"<h2>image {img['image_id']} – {html.escape(img['file_name'])} "
                     f"({len(img['masks'])} masks)</h2>")
        for mask_row in img["masks"]:
            mask = rle_to_mask(mask_row["rle"])
            rows = sorted(by_mask.get((img["key"], int(mask_row["index"])), []),
                          key=lambda r: (not r.get("kept"), -(r["doc"] if r.get("doc") is not None else -1e9)))
            table = ["<table><tr><th></th><th>caption</th><th>noun</th><th>DoC</th><th>uniq</th><th>M</th>"
                     "<th>view</th><th>setting</th></tr>"]
            for r in rows[:max_candidates]:
                cls = "k" if r.get("kept") else "r"
                table.append(f"<tr class='{cls}'><td>{'✔' if r.get('kept') else '✘'}</td>"
                             f"<td>{html.escape(r['text'])}</td><td>{html.escape(r['noun'])}</td>"
                             f"<td>{_fmt(r.get('doc'))}</td><td>{_fmt(r.get('uniqueness'))}</td>"
                             f"<td>{_fmt(r.get('correctness'))}</td><td>{html.escape(str(r['view_name']))}</td>"
                             f"<td>{html.escape(str(r['setting']))}</td></tr>")
            if len(rows) > max_candidates:
                table.append(f"<tr><td colspan=8>… {len(rows) - max_candidates} more</td></tr>")
            table.append("</table>")
            parts.append(f"<div class='m'><div><img src='data:image/png;base64,{_png_b64(_overlay(pixels, mask))}'>"
                         f"<br>mask {mask_row['index']} area {mask_row['area']} score {_fmt(mask_row.get('score'))}"
                         f"</div><div><img src='data:image/png;base64,{_png_b64(_masked_crop(pixels, mask), 96)}'>"
                         f"</div><div>{''.join(table)}</div></div>")
    return atomic_write_text(path, "".join(parts))
