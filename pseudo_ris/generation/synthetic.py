"""A synthetic candidate store of any size, in the generator's exact row format, for merge benchmarks and tests.

Each image has ``masks_per_image`` box masks (COCO RLE at ``height x width``) and ``candidates_per_mask`` candidate
rows per mask (44 = 4 views x 11 settings in the paper's setup) with random CLIP-like logits (``M_all``/``C_all``,
positive, as real CLIP gives), so DoC filtering has real work. Rows are formatted from templates rather than through
``json.dumps`` (the result is the same JSON: a test parses and re-encodes them) and random draws are made per image
with numpy, so that building a store of 100k images takes minutes; images are split
over ``num_shards`` shards the way `ImageSource.shard` splits them (image i goes to shard i % num_shards).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from pseudo_ris.crops import VIEW_NAMES
from pseudo_ris.data.masks import mask_to_rle
from pseudo_ris.generation.store import shard_suffix

SETTINGS = ["beam"] + [f"topk{k}" for k in (5, 7, 9, 11, 13)] + [f"topp{p:g}" for p in (0.4, 0.5, 0.6, 0.7, 0.8)]
_SCORE_LO, _SCORE_HI = 150_000, 350_000
WORDS = ["a", "red", "small", "large", "dog", "cat", "man", "woman", "left", "right", "car", "tree", "blue", "white"]


def _box_rles(n: int, height: int, width: int, rng: random.Random) -> list[tuple[dict, list[int], int]]:
    out = []
    for _ in range(n):
        x0, y0 = rng.randrange(width // 2), rng.randrange(height // 2)
        w, h = rng.randrange(8, width // 2), rng.randrange(8, height // 2)
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y0 + h, x0:x0 + w] = True
        out.append((mask_to_rle(mask), [x0, y0, w, h], w * h))
    return out


def write_synthetic_store(out_dir: str | Path, images: int, *, masks_per_image: int = 10,
                          candidates_per_mask: int = 44, num_shards: int = 1, height: int = 480, width: int = 640,
                          seed: int = 0) -> dict[str, int]:
    """Write ``images`` finished images into ``out_dir`` (``candidates.shard*`` / ``images.shard*`` files)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    draw = np.random.default_rng(seed)
    templates = _box_rles(32, height, width, rng)  # a pool of mask shapes, reused (RLE encoding is slow)
    # scores are k / 10^4 for k in [15 * 10^4, 35 * 10^4]: their JSON text comes from one table, no per-value repr
    score_text = [repr(k / 10_000) for k in range(_SCORE_LO, _SCORE_HI + 1)]
    n_rows_image = masks_per_image * candidates_per_mask
    views = [(c // len(SETTINGS)) % len(VIEW_NAMES) for c in range(candidates_per_mask)]
    fixed = [f'"view": {views[c]}, "view_name": "{VIEW_NAMES[views[c]]}", "setting": "{SETTINGS[c % len(SETTINGS)]}", '
             f'"distinctive": {"false" if SETTINGS[c % len(SETTINGS)] == "beam" else "true"}'
             for c in range(candidates_per_mask)]
    handles = []
    for s in range(num_shards):
        suffix = shard_suffix(s, num_shards)
        handles.append((open(out_dir / f"images.{suffix}.jsonl", "w", encoding="utf-8"),
                        open(out_dir / f"candidates.{suffix}.jsonl", "w", encoding="utf-8")))
    n_rows = 0
    try:
        for i in range(images):
            img_handle, cand_handle = handles[i % num_shards]
            key, file_name = str(i), f"{i:012d}.jpg"
            picks = [rng.randrange(len(templates)) for _ in range(masks_per_image)]
            scores = draw.integers(_SCORE_LO, _SCORE_HI + 1, size=(2, n_rows_image, masks_per_image)).tolist()
            n_words = draw.integers(2, 6, size=n_rows_image).tolist()
            words = draw.integers(0, len(WORDS), size=(n_rows_image, 5)).tolist()
            head = f'{{"image_id": {i}, "file_name": "{file_name}", "mask_index": '
            lines = []
            for k in range(n_rows_image):
                mi, c = divmod(k, candidates_per_mask)
                text_words = [WORDS[w] for w in words[k][:n_words[k]]]
                m_all = [score_text[v - _SCORE_LO] for v in scores[0][k]]
                c_all = [score_text[v - _SCORE_LO] for v in scores[1][k]]
                lines.append(
                    f'{head}{mi}, "cand_index": {k}, {fixed[c]}, '
                    f'"text": "{" ".join(text_words)}", "noun": "{text_words[-1]}", "M": {m_all[mi]}, '
                    f'"C": {c_all[mi]}, "M_all": [{", ".join(m_all)}], "C_all": [{", ".join(c_all)}], "doc": null, '
                    f'"uniqueness": null, "correctness": {m_all[mi]}, "score_transform": "logit", "key": "{key}"}}\n')
            cand_handle.write("".join(lines))
            n_rows += n_rows_image
            image_row = {"key": key, "image_id": i, "file_name": file_name, "height": height, "width": width,
                         "status": "ok",
                         "masks": [{"index": mi, "rle": templates[t][0], "bbox": templates[t][1],
                                    "area": templates[t][2], "score": 0.9, "source": "sam", "category_id": None}
                                   for mi, t in enumerate(picks)],
                         "seconds": 1.0, "n_empty_captions": 0, "n_candidates": n_rows_image}
            img_handle.write(json.dumps(image_row) + "\n")
    finally:
        for pair in handles:
            for handle in pair:
                handle.close()
    return {"images": images, "candidates": n_rows}
