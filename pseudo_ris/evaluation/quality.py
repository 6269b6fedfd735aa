"""Pseudo-label quality measured against SynthRef's ground truth.

The paper (arXiv 2407.07412) can only judge pseudo labels through the models trained on them; on SynthRef every
pool image comes with its true objects and their attributes, so the labels themselves can be scored:

* **mask quality**: each pseudo mask is matched to the ground-truth object of its image with the highest IoU
  (``best IoU``); we report the mean best IoU, the share of masks with best IoU >= 0.5 / 0.75, and the **recall** of
  ground-truth objects (share of GT objects that some pseudo mask covers at IoU >= 0.5 / 0.75).
* **referential accuracy**: an expression is *referential* when the grounding oracle
  (`pseudo_ris.synthref.oracle.is_referential`) says it singles out, in the scene, exactly the GT object that its
  mask matches best. **A mask whose best IoU is below** ``match_iou`` **(0.5 by default) matches no object, so all
  its expressions count as non-referential**: a perfect sentence about a wrong or broken mask is a wrong label.
  ``referential_matched`` gives the same share over expressions of matched masks only (caption quality alone).
* **by shape family** (curved / angular, the families that decide SynthRef's testA / testB): the referential share
  of the expressions of masks matching an object of that family, and the share of the family's GT objects that
  carry at least one referential expression (how much of testA's or testB's kind of target the labels teach).

Expressions are counted as the writer stores them: the *distinct* texts of each mask (the four views often yield
the same beam caption). ``referential`` is the share over all (mask, text) pairs; ``referential_per_mask`` averages
each mask's own share, i.e. the chance that the caption drawn for a mask in one training step is referential
(the trainer samples one of a mask's sentences uniformly). ``referential_raw`` counts every stored
candidate row instead, duplicates included: samples that converge on the same (often right) caption weigh more there.

Candidate-store variants (rows of `pseudo_ris.generation.store`): which decoding settings feed the labels and
whether the DoC filter (`pseudo_ris.generation.writer.filter_candidates`, same code and policy as the generator)
selects among them. ``beam`` / ``plain`` / ``distinctive`` are unfiltered; ``full`` is beam + distinctive
samples after DoC filtering (the paper's method); ``plain_filtered`` is beam + plain samples after filtering (only
when the store holds plain samples: it tells whether distinctive sampling still helps once filtering is on).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.masks import decode_segmentation, mask_iou_matrix, rle_to_mask

MATCH_IOU = 0.5
IOU_LEVELS = (0.5, 0.75)
#: bumped when a report gains fields, so cached reports of an older layout are recomputed
REPORT_VERSION = 2

#: decoding-setting groups of a candidate row
GROUPS = ("beam", "plain", "distinctive")


class QualityError(PseudoRISError):
    """The store / dataset cannot be matched with the ground truth (unknown image, missing attributes)."""


def setting_group(row: Mapping[str, Any]) -> str:
    """``beam`` | ``distinctive`` | ``plain`` (top-k / top-p sampling without the contrast) | ``spatial`` (a caption
    extended by the optional spatial step with a location / size phrase)."""
    setting = str(row.get("setting", ""))
    if setting.startswith("beam"):
        return "beam"
    if setting.startswith("spatial"):
        return "spatial"
    return "distinctive" if row.get("distinctive") else "plain"


@dataclass(frozen=True)
class Variant:
    """A set of pseudo labels derived from one store: the decoding groups used and whether DoC filtering selects."""

    name: str
    label: str
    groups: tuple[str, ...]
    filtered: bool
    #: groups also used when the store has them: the spatial step's texts belong to the full method's output (as in
    #: the generator's own dataset), but a store without them still has every variant
    optional: tuple[str, ...] = ()


VARIANTS: tuple[Variant, ...] = (
    Variant("beam", "beam search only", ("beam",), False),
    Variant("plain", "plain sampling (no filter)", ("plain",), False),
    Variant("distinctive", "distinctive sampling (no filter)", ("distinctive",), False),
    Variant("beam_distinctive", "beam + distinctive (no filter)", ("beam", "distinctive"), False),
    Variant("plain_filtered", "beam + plain sampling + DoC filter", ("beam", "plain"), True),
    Variant("full", "full method: beam + distinctive + DoC filter", ("beam", "distinctive"), True, ("spatial",)),
)
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


# ------------------------------------------------------------------------------------------------ ground truth
@dataclass
class SceneTruth:
    """GT objects of one image: masks ``[K, H, W]`` and oracle objects (attributes + bbox), same order."""

    masks: np.ndarray
    objects: list[dict]
    image_size: int


class GroundTruth:
    """GT objects per image of a SynthRef dataset whose annotations carry ``attributes`` (default: the pool)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._cache: dict[int, SceneTruth] = {}

    @classmethod
    def from_root(cls, data_root: str | Path, name: str = "synthref_pool") -> "GroundTruth":
        from pseudo_ris.data.refer import ReferDataset

        return cls(ReferDataset(data_root, name))

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self.dataset.images

    def scene(self, image_id: int) -> SceneTruth:
        image_id = int(image_id)
        if image_id not in self._cache:
            if image_id not in self.dataset.images:
                raise QualityError(f"image {image_id} is not in the ground-truth dataset "
                                   f"{self.dataset.instances_path} (pseudo labels of another image source?)")
            from pseudo_ris.synthref.oracle import objects_from_annotations

            img = self.dataset.images[image_id]
            h, w = int(img["height"]), int(img["width"])
            anns = sorted(self.dataset.anns_by_image.get(image_id, []), key=lambda a: int(a["id"]))
            try:
                objects = objects_from_annotations(anns)
            except KeyError as exc:
                raise QualityError(f"{self.dataset.instances_path}: {exc.args[0]}") from exc
            masks = (np.stack([decode_segmentation(a["segmentation"], h, w) for a in anns]) if anns
                     else np.zeros((0, h, w), bool))
            self._cache[image_id] = SceneTruth(masks, objects, max(h, w))
        return self._cache[image_id]


@dataclass
class MaskMatch:
    """A pseudo mask's best GT object (``gt_index`` None when the image has no GT object) and its IoU."""

    gt_index: int | None
    iou: float


def match_image(masks: np.ndarray, truth: SceneTruth) -> tuple[list[MaskMatch], np.ndarray]:
    """Best GT match per mask, and the ``[N, K]`` IoU matrix (for recall)."""
    ious = mask_iou_matrix(masks, truth.masks)
    if ious.shape[1] == 0:
        return [MaskMatch(None, 0.0) for _ in range(len(masks))], ious
    best = ious.argmax(1)
    return [MaskMatch(int(b), float(ious[i, b])) for i, b in enumerate(best)], ious


def is_referential_label(text: str, match: MaskMatch, truth: SceneTruth, match_iou: float = MATCH_IOU) -> bool:
    """The module docstring's rule: the mask must match a GT object at IoU >= ``match_iou`` and the oracle must
    ground ``text`` to exactly that object."""
    from pseudo_ris.synthref.oracle import is_referential

    if match.gt_index is None or match.iou < match_iou:
        return False
    return is_referential(text, truth.objects, match.gt_index, truth.image_size)


# --------------------------------------------------------------------------------------------- aggregation
@dataclass
class LabelledMask:
    """One pseudo mask with the (distinct) expressions a label set gives it."""

    image_id: int
    match: MaskMatch
    texts: list[str] = field(default_factory=list)
    referential: list[bool] = field(default_factory=list)
    family: str | None = None  # shape family of the matched GT object (None: matches no object)


def matched_family(match: MaskMatch, truth: SceneTruth, match_iou: float = MATCH_IOU) -> str | None:
    """Shape family of the GT object a mask matches at IoU >= ``match_iou`` (None when it matches none)."""
    from pseudo_ris.synthref.vocab import shape_family

    if match.gt_index is None or match.iou < match_iou:
        return None
    return shape_family(truth.objects[match.gt_index]["shape"])


def gt_objects_by_family(scenes: Iterable[SceneTruth]) -> dict[str, int]:
    """GT objects per shape family over ``scenes`` (the denominators of the per-family coverage)."""
    from pseudo_ris.synthref.vocab import shape_family

    counts: dict[str, int] = {}
    for scene in scenes:
        for obj in scene.objects:
            fam = shape_family(obj["shape"])
            counts[fam] = counts.get(fam, 0) + 1
    return counts


def _share(values: Sequence[bool | float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize_masks(matches: Sequence[MaskMatch], n_gt: int, covered: Mapping[float, int], n_images: int
                    ) -> dict[str, Any]:
    """Mask-quality numbers (see module docstring); ``covered[t]`` = GT objects matched at IoU >= t."""
    ious = [m.iou for m in matches]
    out: dict[str, Any] = {"images": n_images, "masks": len(matches), "gt_objects": n_gt,
                           "masks_per_image": len(matches) / n_images if n_images else None,
                           "mean_iou": _share(ious)}
    for t in IOU_LEVELS:
        out[f"iou>={t}"] = _share([i >= t for i in ious])
        out[f"recall@{t}"] = covered[t] / n_gt if n_gt else None
    return out


def summarize_by_family(labelled: Sequence[LabelledMask], gt_by_family: Mapping[str, int] | None
                        ) -> dict[str, dict[str, Any]]:
    """Per shape family of the matched objects: masks, expressions, referential share and (with ``gt_by_family``)
    the share of the family's GT objects that carry a referential expression."""
    out: dict[str, dict[str, Any]] = {}
    for fam in sorted({m.family for m in labelled if m.family is not None}
                      | set(gt_by_family or {})):
        own = [m for m in labelled if m.family == fam]
        flags = [f for m in own for f in m.referential]
        referred = {(m.image_id, m.match.gt_index) for m in own if any(m.referential)}
        n_gt = (gt_by_family or {}).get(fam)
        out[fam] = {"masks": len(own), "expressions": len(flags), "referential": _share(flags),
                    "gt_objects": n_gt, "objects_referred": len(referred) / n_gt if n_gt else None}
    return out


def summarize_labels(masks: Sequence[LabelledMask], match_iou: float = MATCH_IOU,
                     gt_by_family: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Referential accuracy and the mask quality of the masks that carry at least one expression."""
    labelled = [m for m in masks if m.texts]
    flags = [f for m in labelled for f in m.referential]
    matched = [f for m in labelled if m.match.iou >= match_iou for f in m.referential]
    out: dict[str, Any] = {
        "masks": len(labelled), "expressions": len(flags),
        "expressions_per_mask": len(flags) / len(labelled) if labelled else None,
        "referential": _share(flags),
        "referential_per_mask": _share([float(np.mean(m.referential)) for m in labelled]),
        "masks_with_referential": _share([any(m.referential) for m in labelled]),
        "referential_matched": _share(matched),
        "mean_iou": _share([m.match.iou for m in labelled]),
    }
    for t in IOU_LEVELS:
        out[f"iou>={t}"] = _share([m.match.iou >= t for m in labelled])
    out["by_family"] = summarize_by_family(labelled, gt_by_family)
    return out


def _decode_masks(image_row: Mapping[str, Any]) -> np.ndarray:
    masks = [rle_to_mask(m["rle"]) for m in image_row.get("masks", [])]
    h, w = int(image_row.get("height") or 0), int(image_row.get("width") or 0)
    return np.stack(masks) if masks else np.zeros((0, h, w), bool)


# ----------------------------------------------------------------------------------------- candidate store
def _policy(store_dir: Path, rows: Sequence[Mapping[str, Any]], overrides: Mapping[str, Any] | None):
    """The generator's filter policy: the one recorded in ``summary.json``, else the defaults with the rows' own
    score transform; non-null ``overrides`` win."""
    from dataclasses import fields

    from pseudo_ris.filtering.doc import FilterPolicy

    values: dict[str, Any] = {}
    summary = store_dir / "summary.json"
    if summary.is_file():
        values.update(json.loads(summary.read_text()).get("policy") or {})
    elif rows and rows[0].get("score_transform"):
        values["score_transform"] = rows[0]["score_transform"]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(FilterPolicy)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise QualityError(f"unknown filter option(s) {unknown}; known: {sorted(known)}")
    return FilterPolicy(**values)


def variant_rows(images: list[dict], candidates: list[dict], variant: Variant, policy: Any) -> list[dict]:
    """The candidate rows a variant labels with: its groups' rows, and (filtered) only those the DoC filter keeps."""
    from pseudo_ris.generation.writer import filter_candidates

    groups = variant.groups + variant.optional
    rows = [r for r in candidates if setting_group(r) in groups]
    if not variant.filtered:
        return rows
    return [r for r in filter_candidates(images, rows, policy).candidates if r["kept"]]


def store_quality(store_dir: str | Path, truth: GroundTruth, *, variants: Iterable[str] | None = None,
                  policy: Mapping[str, Any] | None = None, match_iou: float = MATCH_IOU,
                  progress: bool = False) -> dict[str, Any]:
    """Quality of every variant of a candidate store (see module docstring); variants whose decoding groups the
    store lacks are skipped. ``policy``: filter options overriding the store's recorded policy."""
    from pseudo_ris.generation.store import StoreError, load_all, shard_files

    store_dir = Path(store_dir)
    if not shard_files(store_dir):
        raise StoreError(f"no candidate store in {store_dir} (images.shard*of*.jsonl): run tools/generate.py first")
    images, candidates = load_all(store_dir)
    pol = _policy(store_dir, candidates, policy)
    ok_images = [img for img in images if img.get("status") != "unreadable"]  # no_masks images count for recall
    present = {setting_group(r) for r in candidates}

    matches: dict[tuple[str, int], MaskMatch] = {}
    truths: dict[str, SceneTruth] = {}
    all_matches: list[MaskMatch] = []
    n_gt, covered = 0, {t: 0 for t in IOU_LEVELS}
    iterator: Iterable = ok_images
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(ok_images, desc="matching masks", unit="img")
    for img in iterator:
        scene = truth_for(truth, img["image_id"])
        truths[img["key"]] = scene
        found, ious = match_image(_decode_masks(img), scene)
        for mi, m in enumerate(found):
            matches[(img["key"], mi)] = m
        all_matches += found
        n_gt += len(scene.objects)
        for t in IOU_LEVELS:
            covered[t] += int((ious >= t).any(0).sum()) if ious.size else 0
    gt_by_family = gt_objects_by_family(truths.values())
    report: dict[str, Any] = {
        "version": REPORT_VERSION, "store": str(store_dir), "match_iou": match_iou, "policy": _asdict(pol),
        "groups_present": sorted(present),
        "masks": summarize_masks(all_matches, n_gt, covered, len(ok_images)), "variants": {}}

    cache: dict[tuple[str, int, str], bool] = {}
    chosen = [VARIANTS_BY_NAME[v] for v in variants] if variants is not None else list(VARIANTS)
    for var in chosen:
        if not set(var.groups) <= present:
            continue
        by_mask: dict[tuple[str, int], LabelledMask] = {}
        raw: list[bool] = []  # every candidate row, duplicates included
        for r in variant_rows(images, candidates, var, pol):
            key = (r["key"], int(r["mask_index"]))
            if key not in matches:
                raise QualityError(f"candidate of image {r['key']} mask {r['mask_index']} has no mask in the "
                                   f"store's image rows ({store_dir})")
            if key not in by_mask:
                by_mask[key] = LabelledMask(int(r["image_id"]), matches[key],
                                            family=matched_family(matches[key], truths[r["key"]], match_iou))
            lm = by_mask[key]
            text = r["text"]
            flag_key = (r["key"], key[1], text)
            if flag_key not in cache:
                cache[flag_key] = is_referential_label(text, lm.match, truths[r["key"]], match_iou)
            raw.append(cache[flag_key])
            if text in lm.texts:
                continue
            lm.texts.append(text)
            lm.referential.append(cache[flag_key])
        report["variants"][var.name] = {"label": var.label,
                                        **summarize_labels(list(by_mask.values()), match_iou, gt_by_family),
                                        "candidates": len(raw), "referential_raw": _share(raw)}
    return report


def truth_for(truth: GroundTruth, image_id: Any) -> SceneTruth:
    try:
        return truth.scene(int(image_id))
    except (TypeError, ValueError) as exc:
        raise QualityError(f"image id {image_id!r} is not an integer id of the ground-truth dataset") from exc


def _asdict(obj: Any) -> dict:
    from dataclasses import asdict

    return asdict(obj)


# ------------------------------------------------------------------------------------------ written dataset
def match_ref(ds: Any, ref: Mapping[str, Any], truth: GroundTruth) -> tuple[MaskMatch, SceneTruth]:
    """The GT object a written ref's mask matches best (and its scene); refuses a mask of another image size."""
    scene = truth_for(truth, ref["image_id"])
    mask = ds.ref_mask(ref)
    if mask.shape != scene.masks.shape[1:]:
        raise QualityError(f"ref {ref['ref_id']} of {ds.refs_path}: mask {mask.shape} but GT image "
                           f"{ref['image_id']} is {scene.masks.shape[1:]}")
    (match,), _ = match_image(mask[None], scene)
    return match, scene


def dataset_quality(pseudo_root: str | Path, name: str, truth: GroundTruth, *, match_iou: float = MATCH_IOU
                    ) -> dict[str, Any]:
    """Quality of a written pseudo-label dataset (``<pseudo_root>/<name>``, any split_by): every ref's mask and its
    distinct sentences, matched against the GT objects of the same image id."""
    from pseudo_ris.data.refer import ReferDataset

    ds = ReferDataset(pseudo_root, name)
    masks: list[LabelledMask] = []
    for ref in ds.refs:
        match, truth_scene = match_ref(ds, ref, truth)
        lm = LabelledMask(int(ref["image_id"]), match, family=matched_family(match, truth_scene, match_iou))
        for sent in ref["sentences"]:
            text = sent.get("sent") or sent.get("raw", "")
            if text in lm.texts:
                continue
            lm.texts.append(text)
            lm.referential.append(is_referential_label(text, match, truth_scene, match_iou))
        masks.append(lm)
    # coverage over the images the dataset labels (the generator may have labelled fewer than the store holds)
    scenes = [truth_for(truth, i) for i in sorted({int(r["image_id"]) for r in ds.refs})]
    out = summarize_labels(masks, match_iou, gt_objects_by_family(scenes))
    out.update({"dataset": str(ds.dataset_dir), "refs": len(ds.refs),
                "images": len({int(r["image_id"]) for r in ds.refs})})
    return out


# ---------------------------------------------------------------------------------------------- formatting
def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * v:.1f}"


def _num(v: Any, digits: int = 2) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


LABEL_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("masks", "masks", _num), ("candidates", "candidates", _num), ("referential_raw", "ref. of candidates %", _pct),
    ("expressions", "expr.", _num), ("expressions_per_mask", "expr./mask", _num),
    ("referential", "referential %", _pct), ("referential_per_mask", "ref. per mask %", _pct),
    ("referential_matched", "ref. if matched %", _pct), ("masks_with_referential", "masks with a ref. expr. %", _pct),
    ("mean_iou", "mean IoU", _num), ("iou>=0.5", "IoU>=0.5 %", _pct), ("iou>=0.75", "IoU>=0.75 %", _pct),
    ("by_family", "referential % curved / angular", lambda v: _by_family(v, "referential")),
    ("by_family", "GT objects with a ref. expr. % curved / angular", lambda v: _by_family(v, "objects_referred")),
)


def _by_family(by_family: Mapping[str, Any] | None, key: str) -> str:
    from pseudo_ris.synthref.vocab import SHAPE_FAMILIES

    if not by_family:
        return "-"
    return " / ".join(_pct((by_family.get(fam) or {}).get(key)) for fam in SHAPE_FAMILIES)


def format_quality(report: Mapping[str, Any], dataset: Mapping[str, Any] | None = None,
                   title: str | None = None) -> str:
    """Markdown: the mask table and one row per label variant (plus the written dataset if given)."""
    m = report["masks"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| images | masks | masks/image | GT objects | mean best IoU | IoU>=0.5 % | IoU>=0.75 % | "
              "GT recall@0.5 % | GT recall@0.75 % |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {m['images']} | {m['masks']} | {_num(m['masks_per_image'])} | {m['gt_objects']} | "
              f"{_num(m['mean_iou'])} | {_pct(m['iou>=0.5'])} | {_pct(m['iou>=0.75'])} | {_pct(m['recall@0.5'])} | "
              f"{_pct(m['recall@0.75'])} |", ""]
    lines.append("| labels | " + " | ".join(c[1] for c in LABEL_COLUMNS) + " |")
    lines.append("|---|" + "|".join("---:" for _ in LABEL_COLUMNS) + "|")
    rows = [(v["label"], v) for v in report["variants"].values()]
    if dataset is not None:
        rows.append((f"written dataset `{Path(dataset['dataset']).name}`", dataset))
    for label, v in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(v.get(key)) for key, _, fmt in LABEL_COLUMNS) + " |")
    lines += ["", "Candidates = every stored caption of the selection, duplicates included (\"ref. of candidates\" "
                  "counts each); expressions = distinct texts per mask, as the pseudo dataset stores them and the "
                  f"trainer samples them. Referential = the grounding oracle picks exactly the GT "
                  f"object the mask matches best; masks matching no GT object at IoU >= {report['match_iou']} count "
                  "as non-referential. \"ref. if matched\" ignores those masks (caption quality alone). By family: "
                  "expressions of masks matching a curved / angular object (testA's / testB's targets), and the share "
                  "of that family's GT objects with at least one referential expression. "
                  f"Filter policy: {report['policy']}."]
    return "\n".join(lines)


def write_quality(report: Mapping[str, Any], out_dir: str | Path, stem: str = "quality",
                  dataset: Mapping[str, Any] | None = None, title: str | None = None) -> tuple[Path, Path]:
    """``<out_dir>/<stem>.json`` and ``.md``, atomically."""
    from pseudo_ris.data.io import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    payload = {**report, **({"dataset": dataset} if dataset is not None else {})}
    json_path = atomic_write_json(out_dir / f"{stem}.json", payload, indent=2)
    md_path = atomic_write_text(out_dir / f"{stem}.md", format_quality(report, dataset, title) + "\n")
    return json_path, md_path


def per_candidate_flags(store_dir: str | Path, truth: GroundTruth, match_iou: float = MATCH_IOU
                        ) -> list[tuple[dict, bool]]:
    """(candidate row, referential) for every stored candidate (used by plots: DoC of referential vs not)."""
    from pseudo_ris.generation.store import load_all

    images, candidates = load_all(store_dir)
    by_key = {img["key"]: img for img in images}
    found: dict[str, list[MaskMatch]] = {}
    out = []
    for r in candidates:
        img = by_key[r["key"]]
        if r["key"] not in found:
            found[r["key"]] = match_image(_decode_masks(img), truth_for(truth, img["image_id"]))[0]
        match = found[r["key"]][int(r["mask_index"])]
        out.append((r, is_referential_label(r["text"], match, truth.scene(int(img["image_id"])), match_iou)))
    return out
