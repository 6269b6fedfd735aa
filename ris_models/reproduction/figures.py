"""The reproduction's figures: DoC histograms and a label gallery of the SAM store, learning curves of the runs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ris_models.reproduction.plan import Plan, run_dir

if TYPE_CHECKING:
    from ris_models.reproduction.execute import RunRecord

log = logging.getLogger(__name__)

FIGURE_CAPTIONS = {
    "doc_hist": "DoC (log10, with the generator's score transform) of the SAM-mask store's beam and distinctive "
                "candidates, kept vs rejected by the filter (keep DoC > 1, i.e. > 0 on this axis; kept candidates "
                "below 0 are the fallback pick of masks none of whose candidates passed).",
    "doc_by_referential": "the same DoC values split by the grounding oracle: does DoC separate captions that "
                          "single out their object from those that do not?",
    "gallery": "pseudo labels of the first pool images (SAM masks outlined): the beam-search caption, kept (+) and "
               "rejected (-) candidates.",
    "loss": "training loss (moving average) of the first seed of every trained row.",
    "val": "synthref val oIoU during training (first seed; checkpoints are selected on it).",
}


def metrics_files(run: Path) -> list[Path]:
    """The CSV logger's metrics.csv files of a run (``csv/metrics.csv`` or ``csv/version_N/metrics.csv``), oldest
    first."""
    return sorted((run / "csv").rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)


def make_plots(plan: Plan, records: Sequence[RunRecord], fig_dir: Path) -> dict[str, Path]:
    """DoC histogram and gallery of the SAM store, learning curves of the trained runs (seed = first)."""
    from pseudo_ris.evaluation.plots import line_chart_png, read_metrics_csv, smooth

    figs: dict[str, Path] = {}
    store = plan.out_dir / "generate" / "sam"
    if (store / "reproduce_done.json").is_file():
        try:
            figs.update(_store_plots(plan, store, fig_dir))
        except Exception as exc:  # noqa: BLE001 - a plot never fails the page
            log.warning("store plots failed: %s", exc)
    for model in plan.models:
        loss, val = {}, {}
        for rec in records:
            if rec.model != model or rec.result is None or rec.seed != plan.seeds[0] or rec.dataset != "synthref":
                continue
            files = metrics_files(run_dir(plan, rec.model, rec.row, rec.dataset, rec.seed))
            if not files:
                continue
            cols: dict[str, tuple[list[float], list[float]]] = {}
            for path in files:  # a resumed run logs into a new version directory: join them
                for key, (xs, ys) in read_metrics_csv(path).items():
                    cols.setdefault(key, ([], []))[0].extend(xs)
                    cols[key][1].extend(ys)
            if "train/loss" in cols:
                xs, ys = cols["train/loss"]
                loss[rec.row] = (xs, smooth(ys, 5))
            key = next((k for k in cols if k.endswith("val/oIoU") or k == "val/oIoU"), None)
            if key:
                val[rec.row] = (cols[key][0], [100 * v for v in cols[key][1]])
        if loss:
            figs[f"loss_{model}"] = line_chart_png(loss, fig_dir / f"loss_{model}.png", title=f"{model}: training "
                                                   "loss (moving average of 5 logged values)", xlabel="step",
                                                   ylabel="loss")
        if val:
            figs[f"val_{model}"] = line_chart_png(val, fig_dir / f"val_oiou_{model}.png",
                                                  title=f"{model}: synthref val oIoU during training",
                                                  xlabel="step", ylabel="oIoU %")
    return figs


def _store_plots(plan: Plan, store: Path, fig_dir: Path) -> dict[str, Path]:
    from pseudo_ris.data.masks import rle_to_mask
    from pseudo_ris.data.refer import load_rgb
    from pseudo_ris.evaluation.plots import gallery_png, histogram_png
    from pseudo_ris.evaluation.quality import _policy
    from pseudo_ris.generation.store import load_all
    from pseudo_ris.generation.writer import filter_candidates

    images, candidates = load_all(store)
    rows = [r for r in candidates if r.get("setting", "").startswith("beam") or r.get("distinctive")]
    result = filter_candidates(images, rows, _policy(store, rows, None))
    figs: dict[str, Path] = {}
    logd = {"kept": [], "rejected": []}
    for r in result.candidates:
        if r["doc"] is not None and r["doc"] > 0 and math.isfinite(r["doc"]):
            logd["kept" if r["kept"] else "rejected"].append(math.log10(r["doc"]))
    figs["doc_hist"] = histogram_png(logd, fig_dir / "doc_histogram.png", bins=40,
                                     title=f"log10 DoC of candidates (threshold {result.summary['policy']['threshold']})"
                                           f"; transform {result.summary['policy']['score_transform']}",
                                     xlabel="log10 DoC")
    from pseudo_ris.evaluation.quality import GroundTruth, per_candidate_flags

    by_ref = {"referential": [], "not referential": []}
    for r, ok in per_candidate_flags(store, GroundTruth.from_root(plan.data_root)):
        if (r.get("setting", "").startswith("beam") or r.get("distinctive")) and r.get("doc") is not None \
                and r["doc"] > 0 and math.isfinite(r["doc"]):
            by_ref["referential" if ok else "not referential"].append(math.log10(r["doc"]))
    figs["doc_by_referential"] = histogram_png(by_ref, fig_dir / "doc_by_referential.png", bins=40,
                                               title="log10 DoC of candidates, split by the grounding oracle",
                                               xlabel="log10 DoC")
    meta = json.loads((store / "meta.json").read_text())
    by_mask: dict[tuple[str, int], list[dict]] = {}
    for r in result.candidates:
        by_mask.setdefault((r["key"], int(r["mask_index"])), []).append(r)
    entries = []
    for img in sorted(images, key=lambda i: int(i["image_id"])):
        if len(entries) >= plan.gallery_images or img.get("status") != "ok":
            continue
        pixels = load_rgb(Path(meta["image_dir"]) / img["file_name"])
        for m in img["masks"][:2]:
            cands = by_mask.get((img["key"], int(m["index"])), [])
            kept = sorted({r["text"] for r in cands if r["kept"]})
            rejected = sorted({r["text"] for r in cands if not r["kept"]} - set(kept))
            beam = next((r["text"] for r in cands if r["setting"].startswith("beam")), "")
            entries.append({"image": pixels, "mask": rle_to_mask(m["rle"]),
                            "lines": [f"beam: {beam}"] + [f"+ {t}" for t in kept[:2]] + [f"- {t}" for t in
                                                                                        rejected[:1]]})
    if entries:
        figs["gallery"] = gallery_png(entries[: plan.gallery_images], fig_dir / "gallery.png")
    return figs


