"""Per-image pseudo-labelling: masks -> 4 views -> caption candidates -> CLIP scores -> store rows.

The pipeline only sees small interfaces, so SAM / GT / detector masks, any captioner and any CLIP-style scorer plug in:

- ``mask_source(image, image_id, file_name) -> list[ObjectMask]``   (`pseudo_ris.masks`)
- ``captioner(views [N, V, 3, S, S], seed) -> list[list[candidate]]`` with ``.image_size`` and ``.mean``; a candidate
  has ``text``, ``view``, ``setting``                                (`CocaCaptioner` wraps `generate_candidates`)
- ``scorer.image_features / text_features / logits``                 (`pseudo_ris.filtering.ClipScorer`)

Scores follow arXiv 2407.07412, Sec. 3.2: for candidate c of mask m, M[j] uses the masked crop of every
mask j against the noun prompt of c, C[j] the margin-1.2 crop of j against c itself. The full vectors are stored so
DoC can be recomputed later with another transform or threshold without captioning again.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import torch

from pseudo_ris.crops import VIEW_NAMES, make_views
from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.refer import load_rgb
from pseudo_ris.filtering.doc import doc_scores
from pseudo_ris.filtering.nouns import NounExtractor, noun_prompt
from pseudo_ris.filtering.spatial_phrases import SpatialConfig, propose
from pseudo_ris.generation.store import CandidateStore
from pseudo_ris.masks.source import MaskSource, ObjectMask

MASKED_VIEW, CONTEXT_VIEW = 0, 3  # M uses the masked crop, C the margin-1.2 crop


class Captioner(Protocol):
    image_size: int
    mean: Sequence[float]

    def __call__(self, views: torch.Tensor, seed: int) -> list[list[Any]]: ...


class CocaCaptioner:
    """`pseudo_ris.captioning.generate_candidates` behind the `Captioner` interface (seeded per image).

    ``batch_size``: (row, image) decoder pairs in flight, or ``"auto"``: on a GPU every mask x view x setting of the
    image in one batch when its caches fit in half the device's total memory (so the choice depends on the GPU
    model, not on what else runs), else chunks that fit; 256 on a CPU. Chunking changes which random numbers a row
    draws, so keep it fixed to reproduce a run. ``precision``: ``fp32`` (exact; default) or ``bf16`` / ``fp16``
    autocast on a GPU (faster; logits rounded, so samples follow the same rule on slightly different numbers)."""

    def __init__(self, bundle: Any, settings: Sequence[Any] | None = None, *, batch_size: int | str = 256,
                 min_len: int = 5, max_len: int = 30, precision: str = "fp32") -> None:
        from pseudo_ris.captioning import default_settings

        if precision not in ("fp32", "bf16", "fp16"):
            raise PseudoRISError(f"decoding.precision={precision!r}: choose fp32, bf16 or fp16")
        if batch_size != "auto" and (not str(batch_size).isdigit() or int(batch_size) < 1):
            raise PseudoRISError(f"decoding.batch_size={batch_size!r}: a positive integer or auto")
        self.bundle = bundle
        self.settings = list(settings) if settings is not None else default_settings()
        self.image_size = int(bundle.image_size)
        self.mean = tuple(bundle.mean)
        self.batch_size = batch_size
        self.precision = precision
        self.kwargs = {"min_len": min_len, "max_len": max_len}

    def pairs_budget(self, n_masks: int, n_views: int) -> int:
        """Decoder pairs per chunk (see class docstring)."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        device = torch.device(self.bundle.device)
        if device.type != "cuda":
            return 256
        dec, text = self.bundle.model.text_decoder, self.bundle.model.text
        bytes_per = 2 if self.precision != "fp32" else 4
        per_pair = 2 * self.kwargs["max_len"] * bytes_per * (len(dec.resblocks) * dec.width
                                                              + len(text.transformer.resblocks) * text.width)
        per_pair = int(per_pair * 1.5)  # activations and the sampling rule's [rows, vocab] tensors
        fit = torch.cuda.get_device_properties(device).total_memory // 2 // per_pair
        whole = n_views * n_masks * len(self.settings) * max(1, n_masks if n_masks <= 30 else 1)
        return int(max(1, min(whole, fit)))

    def __call__(self, views: torch.Tensor, seed: int) -> list[list[Any]]:
        from pseudo_ris.captioning import generate_candidates

        gen = torch.Generator(device=self.bundle.device).manual_seed(seed)
        device = torch.device(self.bundle.device)
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None
                            and device.type == "cuda"):
            return generate_candidates(self.bundle, views, self.settings, generator=gen,
                                       batch_size=self.pairs_budget(views.shape[0], views.shape[1]), **self.kwargs)


@dataclass
class ImageItem:
    """One image to label. ``key`` is unique within a run (the image id as a string)."""

    image_id: int
    file_name: str  # relative to the run's image_dir
    path: Path

    @property
    def key(self) -> str:
        return str(self.image_id)


def image_seed(seed: int, key: str) -> int:
    """Per-image seed: results do not depend on shard layout, order or restarts."""
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


@dataclass
class PseudoLabelPipeline:
    mask_source: MaskSource
    captioner: Captioner
    scorer: Any
    noun_extractor: NounExtractor
    score_transform: str = "logit"
    seed: int = 0
    prompt_template: str = "a photo of {}"
    spatial: SpatialConfig = field(default_factory=SpatialConfig)

    def score(self, image: np.ndarray, masks: list[ObjectMask], texts: list[str]
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """M, C as ``[N_masks, K]`` logits for K candidate texts, and each candidate's noun phrase."""
        views = make_views(image, [m.mask for m in masks], self.scorer.image_size, fill=self.captioner.mean,
                           margins=(1.2,))
        img_m = self.scorer.image_features(views[:, 0])
        img_c = self.scorer.image_features(views[:, 1])
        nouns = [self.noun_extractor(t).text for t in texts]
        prompts = [noun_prompt(n, self.prompt_template) for n in nouns]
        uniq = sorted(set(prompts) | set(texts))
        index = {t: i for i, t in enumerate(uniq)}
        txt = self.scorer.text_features(uniq)
        logits_m = self.scorer.logits(img_m, txt)  # [N, U]
        logits_c = self.scorer.logits(img_c, txt)
        M = logits_m[:, [index[p] for p in prompts]].double().cpu().numpy()
        C = logits_c[:, [index[t] for t in texts]].double().cpu().numpy()
        return M, C, nouns

    def _row(self, item: ImageItem, mi: int, cand_index: int, view: int, setting: str,
             distinctive: bool, text: str, noun: str, M: np.ndarray, C: np.ndarray) -> dict:
        """One stored candidate: its text, where it came from, and its scores against every mask (``M``, ``C``)."""
        doc, uniq, corr = doc_scores(M, C, mi, self.score_transform)
        return {
            "image_id": item.image_id, "file_name": item.file_name, "mask_index": mi,
            "cand_index": cand_index,
            "view": view, "view_name": VIEW_NAMES[view] if view < len(VIEW_NAMES) else str(view),
            "setting": setting, "distinctive": distinctive,
            "text": text, "noun": noun, "M": float(M[mi]), "C": float(C[mi]),
            "M_all": [float(x) for x in M], "C_all": [float(x) for x in C],
            "doc": doc, "uniqueness": uniq, "correctness": corr, "score_transform": self.score_transform,
        }

    def _spatial_rows(self, image: np.ndarray, masks: list[ObjectMask], item: ImageItem, rows: list[dict]
                      ) -> list[dict]:
        """Candidates with a location / size phrase added (``spatial.enabled``), scored like every other one."""
        if not self.spatial.enabled or not rows:
            return []
        h, w = image.shape[:2]
        heads = [self.noun_extractor(r["text"]).head for r in rows]
        proposals = propose(rows, heads, [m.bbox for m in masks], [m.area for m in masks], w, h, self.spatial)
        if not proposals:
            return []
        M, C, nouns = self.score(image, masks, [p.text for p in proposals])
        return [self._row(item, p.mask_index, len(rows) + k, int(rows[p.source]["view"]),
                          f"spatial_{p.kind}", False, p.text, noun, M[:, k], C[:, k])
                for k, (p, noun) in enumerate(zip(proposals, nouns))]

    def process(self, image: np.ndarray, item: ImageItem) -> tuple[dict, list[dict]]:
        """Image row (masks as RLE) and candidate rows for one decoded image."""
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        masks = self.mask_source(image, item.image_id, item.file_name)
        image_row: dict[str, Any] = {
            "key": item.key, "image_id": item.image_id, "file_name": item.file_name, "height": h, "width": w,
            "status": "ok" if masks else "no_masks",
            "masks": [{"index": i, "rle": m.rle, "bbox": m.bbox, "area": m.area, "score": m.score,
                       "source": m.source, "category_id": m.meta.get("category_id")} for i, m in enumerate(masks)],
        }
        if not masks:
            image_row["seconds"] = time.perf_counter() - t0
            return image_row, []
        views = make_views(image, [m.mask for m in masks], self.captioner.image_size, fill=self.captioner.mean)
        per_mask = self.captioner(views, image_seed(self.seed, item.key))
        cands = [(mi, c) for mi, cs in enumerate(per_mask) for c in cs if c.text.strip()]
        image_row["n_empty_captions"] = sum(len(cs) for cs in per_mask) - len(cands)
        rows: list[dict] = []
        if cands:
            texts = [c.text.strip() for _, c in cands]
            M, C, nouns = self.score(image, masks, texts)
            for k, ((mi, cand), text, noun) in enumerate(zip(cands, texts, nouns)):
                rows.append(self._row(item, mi, k, int(cand.view), str(getattr(cand, "setting", "")),
                                      bool(getattr(cand, "distinctive", False)), text, noun, M[:, k], C[:, k]))
            rows += self._spatial_rows(image, masks, item, rows)
        image_row["seconds"] = time.perf_counter() - t0
        return image_row, rows


@dataclass
class RunStats:
    processed: int = 0
    skipped_done: int = 0
    masks: int = 0
    candidates: int = 0
    unreadable: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def run_generation(items: Iterable[ImageItem], pipeline: PseudoLabelPipeline, store: CandidateStore, *,
                   progress: bool = True, on_image: Callable[[int], None] | None = None,
                   total: int | None = None) -> RunStats:
    """Label every item not yet in ``store``; unreadable files are recorded (status ``unreadable``) and skipped.

    ``on_image(n_processed)`` runs after each committed image (tests use it to interrupt a run).
    """
    from tqdm.auto import tqdm

    stats = RunStats()
    start = time.perf_counter()
    bar = tqdm(items, total=total, disable=not progress, unit="img", desc="pseudo-labels", smoothing=0.1)
    for item in bar:
        if store.is_done(item.key):
            stats.skipped_done += 1
            continue
        try:
            image = load_rgb(item.path, what=f"image {item.image_id}")
        except (PseudoRISError, OSError, ValueError) as exc:
            row = {"key": item.key, "image_id": item.image_id, "file_name": item.file_name, "status": "unreadable",
                   "error": str(exc), "masks": []}
            store.add_image(row, [])
            stats.unreadable.append(row)
            stats.processed += 1
        else:
            image_row, rows = pipeline.process(image, item)
            store.add_image(image_row, rows)
            stats.processed += 1
            stats.masks += len(image_row["masks"])
            stats.candidates += len(rows)
        stats.seconds = time.perf_counter() - start
        bar.set_postfix(masks=stats.masks, cands=stats.candidates, ips=f"{stats.images_per_second:.2f}")
        if on_image is not None:
            on_image(stats.processed)
    bar.close()
    stats.seconds = time.perf_counter() - start
    return stats
