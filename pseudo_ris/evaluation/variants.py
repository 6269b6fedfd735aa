"""Pseudo-label datasets for the ablation rows, all cut from one candidate store (no captioning again).

``beam`` (beam-search captions only), ``beam_distinctive`` (+ distinctive samples, unfiltered) and ``full``
(+ DoC filtering, the paper's method) share the same masks and the same captions; only the selection differs, so
the trained models compare the labels and nothing else. The REFER records are built by the generator's own writer
(`pseudo_ris.generation.writer.build_refer_records`), so a variant's dataset has exactly the generator's layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pseudo_ris.data.refer import write_refer_dataset
from pseudo_ris.evaluation.quality import VARIANTS_BY_NAME, QualityError, _policy, variant_rows


def write_variant_dataset(store_dir: str | Path, variant: str, out_root: str | Path, name: str = "pseudo", *,
                          policy: dict[str, Any] | None = None, image_dir: str | Path | None = None) -> dict[str, Any]:
    """Write ``<out_root>/<name>`` (split_by ``pseudo``) with the labels of ``variant``; returns a small summary.

    ``image_dir`` defaults to the one recorded in the store's ``meta.json``; ``policy`` overrides the store's
    recorded filter policy (filtered variants only).
    """
    from pseudo_ris.generation.store import load_all
    from pseudo_ris.generation.writer import FilterResult, build_refer_records

    if variant not in VARIANTS_BY_NAME:
        raise QualityError(f"unknown pseudo-label variant {variant!r}; choose one of {sorted(VARIANTS_BY_NAME)}")
    store_dir = Path(store_dir)
    images, candidates = load_all(store_dir)
    if not images:
        raise QualityError(f"candidate store {store_dir} has no finished image")
    if image_dir is None:
        meta = store_dir / "meta.json"
        if not meta.is_file():
            raise QualityError(f"{meta} not found: pass image_dir")
        image_dir = json.loads(meta.read_text())["image_dir"]
    var = VARIANTS_BY_NAME[variant]
    rows = [{**r, "kept": True} for r in variant_rows(images, candidates, var, _policy(store_dir, candidates, policy))]
    if not rows:
        raise QualityError(f"variant {variant!r} of {store_dir} selects no candidate (decoding groups {var.groups})")
    imgs, anns, cats, refs = build_refer_records(FilterResult(images, rows))
    write_refer_dataset(out_root, name, split_by="pseudo", images=imgs, annotations=anns, categories=cats, refs=refs,
                        image_dir=str(Path(image_dir).resolve()),
                        extra_info={"generator": {"store": str(store_dir.resolve()), "variant": variant}})
    return {"variant": variant, "refs": len(refs), "sentences": sum(len(r["sentences"]) for r in refs),
            "images": len(imgs), "dataset": str(Path(out_root) / name)}
