"""Filter stored candidates and write the pseudo-label dataset in the REFER layout.

Runs on the stored candidates only (no model), streaming one image at a time: re-filtering with another threshold,
policy or score transform is ``filter_store(...)`` again. One ref per mask that keeps at least one caption; its sentences are the mask's kept
captions (distinct texts, best DoC first); the annotation carries the mask RLE; images are referenced through
``image_dir`` (recorded in dataset_info.json), not copied; every ref is in split ``train`` (``split_by="pseudo"``).
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from array import array
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pseudo_ris.data.io import _umask
from pseudo_ris.data.refer import make_sentence
from pseudo_ris.data.refer_stream import ReferStreamWriter, refer_file_names
from pseudo_ris.filtering.doc import FilterPolicy, doc_scores, doc_scores_rows, select_candidates
from pseudo_ris.generation.store import (StoreError, StoreIndex, dumps_updated, remove_stale_temps,
                                         shard_files, shard_suffix)

DEFAULT_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


class MedianSketch:
    """Median of a stream in bounded memory: exact (the upper median, ``sorted(x)[n // 2]``) while at most
    ``exact_limit`` values have been seen, then a histogram over the top 24 bits of each float64's
    order-preserving bit pattern (sign, exponent, 12 mantissa bits: relative error below 2**-12)."""

    def __init__(self, exact_limit: int = 200_000) -> None:
        self.exact_limit = exact_limit
        self.values: array | None = array("d")
        self.bins: Counter = Counter()
        self.n = 0

    @staticmethod
    def _bin(value: float) -> int:
        bits = struct.unpack("<q", struct.pack("<d", value))[0]
        key = bits if bits >= 0 else -(bits & 0x7FFFFFFFFFFFFFFF) - 1  # monotone in the float's value
        return key >> 40

    @staticmethod
    def _bin_mid(b: int) -> float:
        lo, hi = b << 40, ((b + 1) << 40) - 1

        def to_float(key: int) -> float:
            bits = key if key >= 0 else -(key + 1) | (1 << 63)
            return struct.unpack("<d", struct.pack("<Q", bits & 0xFFFFFFFFFFFFFFFF))[0]
        return (to_float(lo) + to_float(hi)) / 2

    @staticmethod
    def _bins_of(values: Sequence[float]) -> tuple[list[int], list[int]]:
        """`_bin` of many values at once (numpy, same integers): (distinct bins, their counts)."""
        bits = np.asarray(values, dtype=np.float64).view(np.int64)
        keys = np.where(bits >= 0, bits, -(bits & 0x7FFFFFFFFFFFFFFF) - 1) >> 40
        uniq, counts = np.unique(keys, return_counts=True)
        return uniq.tolist(), counts.tolist()

    def _count(self, values: Sequence[float]) -> None:
        for b, c in zip(*self._bins_of(values)):
            self.bins[b] += c

    def add(self, value: float) -> None:
        self.extend([value])

    def extend(self, values: Sequence[float]) -> None:
        """Add many values (the sketch's state is the one a loop of `add` would leave)."""
        if not len(values):
            return
        self.n += len(values)
        if self.values is not None:
            self.values.extend(values)
            if len(self.values) > self.exact_limit:
                self._count(self.values)
                self.values = None
        else:
            self._count(values)

    def median(self) -> float | None:
        if self.n == 0:
            return None
        if self.values is not None:
            return float(sorted(self.values)[self.n // 2])
        seen = 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen > self.n // 2:
                return self._bin_mid(b)
        raise AssertionError("unreachable")


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


class FilterAccumulator:
    """The filter, one image at a time: rescore its candidates under ``policy``, mark them kept / rejected, and
    keep a running summary (counts, sums and bounded median sketches: no candidate is retained)."""

    def __init__(self, policy: FilterPolicy) -> None:
        self.policy = policy
        self.status: Counter = Counter()
        self.reasons: Counter = Counter()
        self.unreadable: list[dict] = []
        self.n_images = self.masks = self.masks_with_candidates = self.masks_kept = 0
        self.candidates = self.kept = 0
        # DoC is a ratio with a heavy right tail (under the exp transform a score gap of 10 is a ratio of 22,026), so
        # its arithmetic mean is set by a few huge ratios; the summary reports the median and the geometric mean
        # (exp of the mean log DoC over positive values), which describe the typical candidate
        self.log_doc_sum = self.log_doc_kept_sum = 0.0
        self.doc_n = self.doc_kept_n = 0
        self.doc_median = MedianSketch()
        self.breakdown: dict[str, dict[str, Any]] = {}

    def add_image(self, image: dict, candidates: list[dict]) -> list[dict]:
        """Count ``image`` and return its candidates rescored, with ``kept`` / ``reason``, by (mask, cand_index)."""
        return [row for _, row in self.mark_image(image, candidates)]

    def mark_image(self, image: dict, candidates: list[dict]) -> list[tuple[int, dict]]:
        """`add_image`, each new row paired with the index of the candidate it was made from (``{**row, ...}``)."""
        self.n_images += 1
        self.status[image.get("status", "ok")] += 1
        if image.get("status") == "unreadable":
            self.unreadable.append({"image_id": image["image_id"], "file_name": image["file_name"],
                                    "error": image.get("error", "")})
        self.masks += len(image.get("masks", []))
        transform = self.policy.score_transform
        mask_of = [int(row["mask_index"]) for row in candidates]
        scores = doc_scores_rows([r["M_all"] for r in candidates], [r["C_all"] for r in candidates], mask_of,
                                 transform) if candidates else []
        if scores is None:  # not one finite score matrix: the general per-row path (same values, or its error)
            scores = [doc_scores(r["M_all"], r["C_all"], mi, transform) for r, mi in zip(candidates, mask_of)]
        groups: dict[int, list[tuple[int, dict]]] = defaultdict(list)
        for i, (row, mi, (doc, uniq, corr)) in enumerate(zip(candidates, mask_of, scores)):
            groups[mi].append((i, {**row, "doc": doc, "uniqueness": uniq, "correctness": corr}))  # `rescore`
        out: list[tuple[int, dict]] = []
        for mi in sorted(groups):
            pairs = sorted(groups[mi], key=lambda p: int(p[1]["cand_index"]))
            keep, reason = select_candidates([r for _, r in pairs], self.policy, f"{image['key']}:{mi}")
            self.reasons[reason] += 1
            keep_set = set(keep)
            self.masks_with_candidates += 1
            self.masks_kept += bool(keep_set)
            for k, (i, r) in enumerate(pairs):
                kept = k in keep_set
                r["kept"], r["reason"] = kept, (reason if kept else "rejected")
                out.append((i, r))
        self._count([r for _, r in out])
        return out

    def _count(self, rows: list[dict]) -> None:
        """Summary counts of one image's marked rows."""
        self.candidates += len(rows)
        finite_docs: list[float] = []
        # which decoding settings / views survive the filter (distinctive vs plain)
        by_name: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            kept, doc = r["kept"], r["doc"]
            self.kept += kept
            if doc is not None and math.isfinite(doc):
                finite_docs.append(doc)
                if doc > 0:
                    log_doc = math.log(doc)
                    self.log_doc_sum += log_doc
                    self.doc_n += 1
                    if kept:
                        self.log_doc_kept_sum += log_doc
                        self.doc_kept_n += 1
            by_name[f"setting {r['setting']}"].append(r)
            by_name[f"view {r['view_name']}"].append(r)
        self.doc_median.extend(finite_docs)
        for name, group in by_name.items():
            d = self.breakdown.get(name)
            if d is None:
                d = self.breakdown[name] = {"candidates": 0, "kept": 0, "_docs": MedianSketch(20_000)}
            d["candidates"] += len(group)
            d["kept"] += sum(int(r["kept"]) for r in group)
            d["_docs"].extend([r["doc"] for r in group if _finite(r["doc"])])

    def summary(self) -> dict[str, Any]:
        breakdown = {}
        for name, d in sorted(self.breakdown.items()):
            breakdown[name] = {"candidates": d["candidates"], "kept": d["kept"],
                               "kept_frac": d["kept"] / d["candidates"], "median_doc": d["_docs"].median()}
        median = self.doc_median.median()
        return {
            "images": self.n_images, "images_ok": self.status.get("ok", 0),
            "images_no_masks": self.status.get("no_masks", 0), "images_unreadable": self.status.get("unreadable", 0),
            "unreadable": list(self.unreadable), "masks": self.masks,
            "masks_with_candidates": self.masks_with_candidates,
            "masks_kept": self.masks_kept, "candidates": self.candidates, "kept": self.kept,
            "geomean_doc": math.exp(self.log_doc_sum / self.doc_n) if self.doc_n else None,
            "geomean_doc_kept": math.exp(self.log_doc_kept_sum / self.doc_kept_n) if self.doc_kept_n else None,
            "median_doc": float(median) if median is not None else None,
            "mask_decisions": dict(self.reasons), "policy": asdict(self.policy), "by_setting_view": breakdown,
        }


@dataclass
class FilterResult:
    images: list[dict]
    candidates: list[dict]  # rescored, with "kept" and "reason"
    summary: dict[str, Any] = field(default_factory=dict)


def filter_candidates(images: list[dict], candidates: list[dict], policy: FilterPolicy) -> FilterResult:
    """In-memory filter of a whole store (analysis, small stores): every candidate rescored and marked."""
    by_key: dict[str, list[dict]] = defaultdict(list)
    for row in candidates:
        by_key[row["key"]].append(row)
    acc = FilterAccumulator(policy)
    out: list[dict] = []
    for img in sorted(images, key=lambda i: i["key"]):
        out.extend(acc.add_image(img, by_key.get(img["key"], [])))
    return FilterResult(images, out, acc.summary())


class _Ids:
    """Running annotation / sentence ids of a dataset being written (deterministic in (image, mask) order)."""

    def __init__(self) -> None:
        self.ann = self.sent = 0


def image_records(img: dict, rescored: list[dict], cats: list[dict], ids: _Ids
                  ) -> tuple[list[dict], list[dict], list[dict]]:
    """(images, annotations, refs) of one image: one ref per mask that kept a caption; sentences are the mask's
    distinct kept captions, best DoC first."""
    if img.get("status") != "ok":
        return [], [], []
    by_mask: dict[int, list[dict]] = defaultdict(list)
    for r in rescored:
        if r["kept"]:
            by_mask[int(r["mask_index"])].append(r)
    kept_here = [(mask, by_mask[int(mask["index"])]) for mask in img["masks"] if by_mask.get(int(mask["index"]))]
    if not kept_here:
        return [], [], []
    cat_ids = {int(c["id"]) for c in cats}
    images = [{"id": int(img["image_id"]), "file_name": img["file_name"], "height": int(img["height"]),
               "width": int(img["width"])}]
    anns, refs = [], []
    for mask, rows in kept_here:
        ids.ann += 1
        ann_id = ids.ann
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
            ids.sent += 1
            s = make_sentence(ids.sent, r["text"])
            s.update({"doc": r["doc"], "setting": r["setting"], "view": r["view"]})
            sentences.append(s)
        refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": int(img["image_id"]),
                     "file_name": img["file_name"], "split": "train", "category_id": cat,
                     "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
    return images, anns, refs


def build_refer_records(result: FilterResult, categories: list[dict] | None = None
                        ) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(images, annotations, categories, refs) of the pseudo dataset, ids deterministic in (image, mask) order."""
    by_key: dict[str, list[dict]] = defaultdict(list)
    for r in result.candidates:
        by_key[r["key"]].append(r)
    cats = categories or [DEFAULT_CATEGORY]
    ids = _Ids()
    images, anns, refs = [], [], []
    for img in sorted(result.images, key=lambda i: (int(i["image_id"]), i["key"])):
        i, a, r = image_records(img, by_key.get(img["key"], []), cats, ids)
        images += i
        anns += a
        refs += r
    return images, anns, cats, refs


MERGED_FILES = ["images.jsonl", "candidates.jsonl", "summary.json", "report.html"]


def shard_report(index: StoreIndex, num_shards: int | None, expected: list[int] | None) -> dict[str, Any]:
    """What is missing or wrong in a sharded store: shards absent, shards unfinished (fewer images than their
    share of the source), files of another shard layout, and images finished by more than one shard."""
    present = {StoreIndex.suffix(images): done for (images, _), done in zip(index.pairs, index.per_shard.values())}
    report: dict[str, Any] = {"missing": [], "incomplete": {}, "foreign": [], "duplicated": {}}
    if num_shards is not None:
        wanted = [shard_suffix(i, num_shards) for i in range(num_shards)]
        report["missing"] = [s for s in wanted if s not in present]
        report["foreign"] = sorted(s for s in present if s not in wanted)
        for i, suffix in enumerate(wanted):
            if expected is not None and suffix in present and present[suffix] < expected[i]:
                report["incomplete"][suffix] = f"{present[suffix]}/{expected[i]} images"
    dup = index.duplicates
    report["duplicated"] = {k: dup[k] for k in sorted(dup)[:10]}
    report["n_duplicated"] = len(dup)
    return report


def _describe(report: dict[str, Any]) -> str:
    parts = []
    if report["missing"]:
        parts.append(f"missing shards {report['missing']}")
    if report["incomplete"]:
        parts.append("unfinished shards " + ", ".join(f"{k} ({v})" for k, v in report["incomplete"].items()))
    if report["foreign"]:
        parts.append(f"shard files of another layout {report['foreign']}")
    if report["n_duplicated"]:
        parts.append(f"{report['n_duplicated']} images finished by more than one shard (e.g. "
                     + ", ".join(f"image {k} in {v}" for k, v in list(report["duplicated"].items())[:3]) + ")")
    return "; ".join(parts)


def filter_store(out_dir: str | Path, policy: FilterPolicy, *, dataset_root: str | Path, dataset_name: str,
                 image_dir: str | Path, categories: list[dict] | None = None, merge: bool = True,
                 extra_info: dict | None = None, num_shards: int | None = None, expected: list[int] | None = None,
                 allow_partial: bool = False, sample_images: int = 20) -> FilterResult:
    """Filter every shard of ``out_dir`` with ``policy``; write the REFER dataset and (``merge``) the merged store.

    Streams one image at a time (`StoreIndex`): memory holds one image's candidates, whatever the store size.
    The shard layout is checked first (``num_shards``, ``expected`` finished images per shard): duplicated or
    foreign shards are refused; missing or unfinished ones too unless ``allow_partial``. The returned result holds
    the summary and the first ``sample_images`` labelled images with their candidates (for the gallery)."""
    out_dir = Path(out_dir)
    if not shard_files(out_dir):
        raise StoreError(f"no candidate store in {out_dir} (images.shard*of*.jsonl): run stage=generate with "
                         "this out_dir first")
    remove_stale_temps(out_dir, MERGED_FILES)
    dataset_dir = Path(dataset_root) / dataset_name
    remove_stale_temps(dataset_dir, refer_file_names("pseudo"))
    index = StoreIndex.build(out_dir)
    report = shard_report(index, num_shards, expected)
    if report["foreign"] or report["n_duplicated"]:
        raise StoreError(f"refusing to merge {out_dir}: {_describe(report)}")
    if (report["missing"] or report["incomplete"]) and not allow_partial:
        raise StoreError(f"refusing to filter the incomplete store {out_dir}: {_describe(report)}; finish those "
                         "shards (rerun their stage=generate command) or pass allow_partial=true")
    cats = categories or [DEFAULT_CATEGORY]
    acc, ids = FilterAccumulator(policy), _Ids()
    sample = FilterResult([], [])
    writer = ReferStreamWriter(dataset_root, dataset_name, split_by="pseudo", categories=cats,
                               image_dir=str(Path(image_dir).resolve()))
    merged = [_TempLines(out_dir / name) for name in ("images.jsonl", "candidates.jsonl")] if merge else []
    try:
        for img, rows, texts in index.iter_images_with_text():
            marked = acc.mark_image(img, rows)
            rescored = [r for _, r in marked]
            writer.add(*image_records(img, rescored, cats, ids))
            if merge:
                merged[0].write([json.dumps(img)])
                merged[1].write([dumps_updated(texts[i], rows[i], r) for i, r in marked])
            if img.get("status") == "ok" and len(sample.images) < sample_images:
                sample.images.append(img)
                sample.candidates.extend(rescored)
        summary = acc.summary()
        summary.update({"refs": writer.n_refs, "sentences": ids.sent, "shards": report})
        writer.close(extra_info={"generator": {**(extra_info or {}), "summary": {
            k: v for k, v in summary.items() if k != "unreadable"}}})
        for part in reversed(merged):  # candidates first, images (the done-list) last
            part.commit()
    except BaseException:
        writer.abort()
        for part in merged:
            part.abort()
        raise
    sample.summary = summary
    return sample


class _TempLines:
    """JSON lines streamed to a temporary file next to ``path``, renamed onto it by `commit`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.handle = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, lines: list[str]) -> None:
        if lines:
            self.handle.write("\n".join(lines) + "\n")

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.chmod(self.tmp, 0o666 & ~_umask())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)
