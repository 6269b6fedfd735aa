"""Zero-shot referring segmentation: rank an image's candidate masks by a CLIP scorer's similarity with the
expression and return the best one. No training (the reproduction table's lower bound).

The masks come from the pseudo-label generator's mask source (`pseudo_ris.masks`: SAM, or GT instances for an
upper bound on ranking alone) and the scores from its CLIP scorer (`pseudo_ris.filtering.ClipScorer`), on the same
crops the generator uses (`pseudo_ris.crops.make_views`): the masked crop and the margin-1.2 context crop, as in DoC's
M and C. A mask's score is the sum of the selected views' logits with the expression. An image without
masks predicts an empty mask. Scored with `ris_models.metrics.RISMetrics` at the original resolution, every sentence
of every ref.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pseudo_ris.crops import CLIP_MEAN, make_views
from pseudo_ris.data.errors import PseudoRISError
from ris_models.metrics import RISMetrics, metrics_to_floats

VIEWS = {"masked": 0, "context": 1}


class ZeroShotConfigError(PseudoRISError):
    """An invalid zero-shot option."""


class ZeroShotRIS:
    """``predict(image, image_id, sentences)`` -> one mask per sentence (the best-scoring candidate mask)."""

    def __init__(self, mask_source: Any, scorer: Any, *, views: Sequence[str] = ("masked", "context"),
                 fill: Sequence[float] = CLIP_MEAN, context_margin: float = 1.2, cache_size: int = 64) -> None:
        bad = [v for v in views if v not in VIEWS]
        if bad or not views:
            raise ZeroShotConfigError(f"zero-shot views must be a non-empty subset of {sorted(VIEWS)}, got {views}")
        self.mask_source = mask_source
        self.scorer = scorer
        self.views = tuple(views)
        self.fill = tuple(fill)
        self.context_margin = float(context_margin)
        self.cache_size = cache_size
        self._cache: dict[Any, tuple[np.ndarray, torch.Tensor | None]] = {}

    def image_state(self, image: np.ndarray, image_id: Any) -> tuple[np.ndarray, torch.Tensor | None]:
        """Candidate masks ``[N, H, W]`` and their view features ``[V, N, D]`` (None without masks), cached."""
        if image_id in self._cache:
            return self._cache[image_id]
        objs = self.mask_source(image, image_id)
        masks = np.stack([o.mask for o in objs]) if objs else np.zeros((0, *image.shape[:2]), bool)
        feats = None
        if len(masks):
            crops = make_views(image, masks, self.scorer.image_size, fill=self.fill, margins=(self.context_margin,))
            feats = torch.stack([self.scorer.image_features(crops[:, VIEWS[v]]) for v in self.views])
        if len(self._cache) >= self.cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[image_id] = (masks, feats)
        return masks, feats

    def scores(self, image: np.ndarray, image_id: Any, sentences: Sequence[str]) -> np.ndarray:
        """``[S, N]`` summed view logits of every sentence with every candidate mask."""
        masks, feats = self.image_state(image, image_id)
        if feats is None or not sentences:
            return np.zeros((len(sentences), len(masks)))
        text = self.scorer.text_features(list(sentences))
        total = sum(self.scorer.logits(feats[v], text) for v in range(len(self.views)))  # [N, S]
        return total.T.double().cpu().numpy()

    def predict(self, image: np.ndarray, image_id: Any, sentences: Sequence[str]) -> list[np.ndarray]:
        masks, _ = self.image_state(image, image_id)
        if len(masks) == 0:
            return [np.zeros(image.shape[:2], bool) for _ in sentences]
        best = self.scores(image, image_id, sentences).argmax(1)
        return [masks[int(b)] for b in best]


def evaluate_zero_shot(model: ZeroShotRIS, dataset: Any, splits: Sequence[str] | None = None, *,
                       limit: int | None = None, progress: bool = True) -> dict[str, dict[str, float]]:
    """``{split: {mIoU, oIoU, P@X..., n}}`` over every sentence of ``dataset``'s ``splits`` (default: eval splits);
    ``limit`` keeps the first N sentences of a split, like the trainer's ``limit_eval``."""
    from tqdm.auto import tqdm

    out: dict[str, dict[str, float]] = {}
    for split in (list(splits) if splits else dataset.eval_splits):
        samples = dataset.samples(split)
        if limit is not None:
            samples = samples[: int(limit)]
        by_image: dict[int, list] = {}
        for s in samples:
            by_image.setdefault(s.image_id, []).append(s)
        metric = RISMetrics()
        for image_id, group in tqdm(by_image.items(), desc=f"zero-shot {dataset.name}/{split}", unit="img",
                                    disable=not progress):
            image = dataset.load_image(image_id)
            preds = model.predict(image, image_id, [s.sentence for s in group])
            targets = [dataset.ann_mask(s.ann_id) for s in group]
            metric.update(torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(targets)))
        out[split] = {**metrics_to_floats(metric.compute()), "n": float(len(samples))}
    return out


def build_zero_shot(gen_cfg: Mapping[str, Any], dataset: Any = None, views: Sequence[str] = ("masked", "context")
                    ) -> ZeroShotRIS:
    """A zero-shot model from a generation config (``conf/generate.yaml`` as a dict): its captioner's contrastive
    head (or its open_clip scorer) and its mask source (``masks=gt`` needs ``dataset``, the evaluated one)."""
    from pseudo_ris.generation import runner
    from pseudo_ris.masks.source import SelectionConfig, build_mask_source

    device = gen_cfg.get("device", "cpu")
    allow_download = bool(gen_cfg.get("allow_download", False))
    gen = gen_cfg["generator"]
    # the generator's own scorer builder (and its check of the scorer kind), so `pretrained: shipped` and local files
    # resolve the same way
    bundle = (runner.build_captioner_bundle(gen["captioner"], device, allow_download)
              if gen["scorer"]["kind"] == "captioner" else None)
    scorer = runner.build_scorer(gen["scorer"], bundle, device, allow_download)
    sam_cfg = dict(gen_cfg.get("sam") or {})
    name, ckpt = sam_cfg.pop("name", "tiny"), runner.resolve_weights(sam_cfg.pop("checkpoint", None), "sam")
    seed = sam_cfg.pop("seed", None)

    def sam_factory() -> Any:
        from pseudo_ris.masks.sam import build_sam

        if seed is not None:
            torch.manual_seed(int(seed))
        return build_sam(name, checkpoint=ckpt, device=device)

    source = build_mask_source(gen_cfg["masks"], sam_factory=sam_factory, dataset=dataset, sam_kwargs=sam_cfg,
                               selection=SelectionConfig(**(gen_cfg.get("selection") or {})))
    fill = tuple(bundle.mean) if bundle is not None else CLIP_MEAN
    return ZeroShotRIS(source, scorer, views=views, fill=fill)


def write_zero_shot(results: dict[str, dict[str, float]], out_dir: str | Path, dataset: str,
                    meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Same files as a trained model's evaluation (``metrics_<dataset>.json`` / ``.md``)."""
    from ris_models.evaluation import write_results

    return write_results(results, out_dir, dataset, {"model": "zero-shot", **meta})
