"""Filter stored candidates and write the pseudo-label dataset in the REFER layout.

Runs on the merged store only (no model): re-filtering with another threshold, policy or score transform is
``filter_store(...)`` again. One ref per mask that keeps at least one caption; its sentences are the mask's kept
captions (distinct texts, best DoC first); the annotation carries the mask RLE; images are referenced through
``image_dir`` (recorded in dataset_info.json), not copied; every ref is in split ``train`` (``split_by="pseudo"``).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pseudo_ris.data.refer import make_sentence, write_refer_dataset
from pseudo_ris.filtering.doc import FilterPolicy, rescore, select_candidates
from pseudo_ris.generation.store import StoreError, _rewrite, load_all, shard_files

DEFAULT_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


@dataclass
class FilterResult:
    images: list[dict]
    candidates: list[dict]  # rescored, with "kept" and "reason"
    summary: dict[str, Any] = field(default_factory=dict)


def filter_candidates(images: list[dict], candidates: list[dict], policy: FilterPolicy) -> FilterResult:
    """Rescore every candidate under ``policy.score_transform`` and mark it kept / rejected."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in candidates:
        groups[(row["key"], int(row["mask_index"]))].append(rescore(row, policy.score_transform))
    out: list[dict] = []
    reasons: Counter = Counter()
    for (key, mi), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rows.sort(key=lambda r: int(r["cand_index"]))
        keep, reason = select_candidates(rows, policy, f"{key}:{mi}")
        reasons[reason] += 1
        keep_set = set(keep)
        for i, r in enumerate(rows):
            out.append({**r, "kept": i in keep_set, "reason": reason if i in keep_set else "rejected"})
    docs = [r["doc"] for r in out if r["doc"] is not None and math.isfinite(r["doc"])]
    kept_docs = [r["doc"] for r in out if r["kept"] and r["doc"] is not None and math.isfinite(r["doc"])]
    status = Counter(img.get("status", "ok") for img in images)
    breakdown: dict[str, dict[str, Any]] = {}
    for r in out:  # which decoding settings / views survive the filter (distinctive vs plain, DESIGN 1.3)
        for name in (f"setting {r['setting']}", f"view {r['view_name']}"):
            d = breakdown.setdefault(name, {"candidates": 0, "kept": 0, "_docs": []})
            d["candidates"] += 1
            d["kept"] += int(r["kept"])
            if r["doc"] is not None and math.isfinite(r["doc"]):
                d["_docs"].append(r["doc"])
    for d in breakdown.values():
        docs_s = sorted(d.pop("_docs"))
        d["kept_frac"] = d["kept"] / d["candidates"]
        d["median_doc"] = docs_s[len(docs_s) // 2] if docs_s else None
    summary = {
        "images": len(images), "images_ok": status.get("ok", 0), "images_no_masks": status.get("no_masks", 0),
        "images_unreadable": status.get("unreadable", 0),
        "unreadable": [{"image_id": i["image_id"], "file_name": i["file_name"], "error": i.get("error", "")}
                       for i in images if i.get("status") == "unreadable"],
        "masks": sum(len(i.get("masks", [])) for i in images),
        "masks_with_candidates": len(groups),
        "masks_kept": len({(r["key"], r["mask_index"]) for r in out if r["kept"]}),
        "candidates": len(out), "kept": sum(r["kept"] for r in out),
        "mean_doc": sum(docs) / len(docs) if docs else None,
        "mean_doc_kept": sum(kept_docs) / len(kept_docs) if kept_docs else None,
        "median_doc": float(sorted(docs)[len(docs) // 2]) if docs else None,
        "mask_decisions": dict(reasons), "policy": asdict(policy), "by_setting_view": dict(sorted(breakdown.items())),
    }
    return FilterResult(images, out, summary)


def build_refer_records(result: FilterResult, categories: list[dict] | None = None
                        ) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(images, annotations, categories, refs) of the pseudo dataset, ids deterministic in (image, mask) order."""
    by_mask: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in result.candidates:
        if r["kept"]:
            by_mask[(r["key"], int(r["mask_index"]))].append(r)
    cats = categories or [DEFAULT_CATEGORY]
    cat_ids = {int(c["id"]) for c in cats}
    images, anns, refs = [], [], []
    ann_id = sent_id = 0
    for img in sorted(result.images, key=lambda i: (int(i["image_id"]), i["key"])):
        if img.get("status") != "ok":
            continue
        kept_here = []
        for mask in img["masks"]:
            rows = by_mask.get((img["key"], int(mask["index"])))
            if rows:
                kept_here.append((mask, rows))
        if not kept_here:
            continue
        images.append({"id": int(img["image_id"]), "file_name": img["file_name"], "height": int(img["height"]),
                       "width": int(img["width"])})
        for mask, rows in kept_here:
            ann_id += 1
            cat = mask.get("category_id")
            cat = int(cat) if cat is not None and int(cat) in cat_ids else int(cats[0]["id"])
            anns.append({"id": ann_id, "image_id": int(img["image_id"]), "category_id": cat,
                         "segmentation": mask["rle"], "area": int(mask["area"]), "bbox": mask["bbox"], "iscrowd": 0,
                         "pseudo": {"mask_index": int(mask["index"]), "mask_score": mask.get("score"),
                                    "source": mask.get("source")}})
            sentences, seen = [], set()
            for r in sorted(rows, key=lambda r: -(r["doc"] if r["doc"] is not None else r["correctness"])):
                if r["text"] in seen:
                    continue
                seen.add(r["text"])
                sent_id += 1
                s = make_sentence(sent_id, r["text"])
                s.update({"doc": r["doc"], "setting": r["setting"], "view": r["view"]})
                sentences.append(s)
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": int(img["image_id"]),
                         "file_name": img["file_name"], "split": "train", "category_id": cat,
                         "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
    return images, anns, cats, refs


def merge_shards(out_dir: str | Path, result: FilterResult) -> tuple[Path, Path]:
    """Write ``images.jsonl`` and ``candidates.jsonl`` (all shards, rescored, with kept / reason) atomically."""
    out_dir = Path(out_dir)
    images_path, cands_path = out_dir / "images.jsonl", out_dir / "candidates.jsonl"
    _rewrite(cands_path, (json.dumps(r) + "\n" for r in result.candidates))
    _rewrite(images_path, (json.dumps(i) + "\n" for i in result.images))
    return images_path, cands_path


def filter_store(out_dir: str | Path, policy: FilterPolicy, *, dataset_root: str | Path, dataset_name: str,
                 image_dir: str | Path, categories: list[dict] | None = None, merge: bool = True,
                 extra_info: dict | None = None) -> FilterResult:
    """Load all shards of ``out_dir``, filter with ``policy``, write the REFER dataset and the merged store."""
    if not shard_files(out_dir):
        raise StoreError(f"no candidate store in {out_dir} (images.shard*of*.jsonl): run stage=generate first")
    images, candidates = load_all(out_dir)
    result = filter_candidates(images, candidates, policy)
    imgs, anns, cats, refs = build_refer_records(result, categories)
    result.summary.update({"refs": len(refs), "sentences": sum(len(r["sentences"]) for r in refs)})
    write_refer_dataset(dataset_root, dataset_name, split_by="pseudo", images=imgs, annotations=anns,
                        categories=cats, refs=refs, image_dir=str(Path(image_dir).resolve()),
                        extra_info={"generator": {**(extra_info or {}), "summary": {
                            k: v for k, v in result.summary.items() if k != "unreadable"}}})
    if merge:
        merge_shards(out_dir, result)
    return result
