"""Score a finished candidate store again with another CLIP scorer, keeping every caption candidate as it is.

Decoding does not depend on the scorer, so comparing DoC scorers on the very same candidates only needs the M / C
vectors recomputed: for each image of the source store, its masks (stored as RLE) and candidate texts are scored by
`PseudoLabelPipeline.score` (the generator's own scoring code: masked crops against noun prompts, margin-1.2 crops
against the captions, filled with the captioner's mean colour) and each row's DoC is recomputed. The result is a new
store that `tools/pseudo_quality.py` and `tools/generate.py stage=filter` read like any other. Resumable: the new
store's done-list is honoured, image by image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_json
from pseudo_ris.data.masks import rle_to_mask
from pseudo_ris.data.refer import load_rgb
from pseudo_ris.filtering.doc import doc_scores
from pseudo_ris.generation.pipeline import PseudoLabelPipeline
from pseudo_ris.generation.store import META_FILE, CandidateStore, StoreIndex, shard_files
from pseudo_ris.masks.source import ObjectMask

SCORE_KEYS = ("M", "C", "M_all", "C_all", "doc", "uniqueness", "correctness", "score_transform", "noun")


class RescoreError(PseudoRISError):
    """The source store cannot be rescored (missing, unfinished, or the output is the source itself)."""


def rescore_rows(pipeline: PseudoLabelPipeline, image: np.ndarray, image_row: Mapping[str, Any],
                 rows: list[dict]) -> list[dict]:
    """``rows`` of one image with their scores recomputed by ``pipeline``'s scorer (text, mask and origin kept)."""
    if not rows:
        return []
    masks = [ObjectMask(rle_to_mask(m["rle"])) for m in image_row["masks"]]
    M, C, nouns = pipeline.score(image, masks, [r["text"] for r in rows])
    out = []
    for k, (row, noun) in enumerate(zip(rows, nouns)):
        mi = int(row["mask_index"])
        doc, uniq, corr = doc_scores(M[:, k], C[:, k], mi, pipeline.score_transform)
        out.append({**{key: v for key, v in row.items() if key != "key"}, "noun": noun,
                    "M": float(M[mi, k]), "C": float(C[mi, k]),
                    "M_all": [float(x) for x in M[:, k]], "C_all": [float(x) for x in C[:, k]],
                    "doc": doc, "uniqueness": uniq, "correctness": corr, "score_transform": pipeline.score_transform})
    return out


def rescore_store(src: str | Path, dst: str | Path, pipeline: PseudoLabelPipeline, *, scorer_cfg: Mapping[str, Any],
                  image_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Write ``dst``: the candidates of store ``src`` scored by ``pipeline`` (its scorer and score transform).

    ``scorer_cfg`` is recorded in ``dst``'s meta in place of the source's scorer; ``image_dir`` defaults to the one
    recorded in the source's meta. Returns counts."""
    import json

    src, dst = Path(src), Path(dst)
    if not shard_files(src):
        raise RescoreError(f"no candidate store in {src} (images.shard*of*.jsonl): run tools/generate.py first")
    if dst.resolve() == src.resolve():
        raise RescoreError(f"out_dir {dst} is the source store itself; rescoring writes a new store")
    meta = json.loads((src / META_FILE).read_text()) if (src / META_FILE).is_file() else {}
    image_dir = Path(image_dir or meta.get("image_dir") or "")
    if not image_dir.is_dir():
        raise RescoreError(f"image directory {image_dir} of store {src} not found; pass image_dir=<dir>")
    new_meta = {**meta, "scorer": dict(scorer_cfg), "num_shards": 1, "rescored_from": str(src)}
    store = CandidateStore(dst, 0, 1, meta=new_meta)
    index = StoreIndex.build(src)
    done = skipped = candidates = 0
    iterator: Any = index.iter_images()
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(index), desc="rescore", unit="img")
    for image_row, rows in iterator:
        if store.is_done(image_row["key"]):
            skipped += 1
            continue
        new_rows = []
        if rows and image_row.get("status") == "ok":
            image = load_rgb(image_dir / image_row["file_name"], what=f"image {image_row['image_id']}")
            new_rows = rescore_rows(pipeline, image, image_row, rows)
        store.add_image({k: v for k, v in image_row.items() if k != "n_candidates"}, new_rows)
        done += 1
        candidates += len(new_rows)
    summary_path = src / "summary.json"
    policy = json.loads(summary_path.read_text()).get("policy") if summary_path.is_file() else None
    policy = {**(policy or {}), "score_transform": pipeline.score_transform}
    atomic_write_json(dst / "summary.json", {"policy": policy, "rescored_from": str(src), "images": len(index)},
                      indent=2)
    return {"images": done, "skipped_done": skipped, "candidates": candidates}
