"""Evaluation outputs: run ``trainer.test`` over splits, print the table, write JSON/Markdown and PNG overlays.

Files written next to the evaluated checkpoint (``<ckpt dir>/``):

* ``metrics_<dataset>.json``: options (threshold, resolution, precision rule) and per-split metrics as fractions;
* ``metrics_<dataset>.md``: the same table in Markdown (percentages);
* ``overlays_<dataset>/<split>/<k>.png``: image | prediction | ground truth with the expression, drawn with PIL.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pseudo_ris.data.refer import ReferDataset
from ris_models.datamodule import RISDataModule
from ris_models.lit_module import RISLitModule
from ris_models.metrics import METRIC_KEYS

TABLE_KEYS = METRIC_KEYS


def format_table(results: dict[str, dict[str, float]], title: str | None = None) -> str:
    """A Markdown table of percentages, one row per split (also readable in a terminal)."""
    header = ["split", "n", *TABLE_KEYS]
    lines = [f"**{title}** (mIoU, oIoU, P@X in %)", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if k == "split" else "---:" for k in header) + "|")
    for split, values in results.items():
        cells = [split, str(int(values.get("n", 0)))]
        cells += [f"{100.0 * values[k]:.2f}" if k in values else "-" for k in TABLE_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: dict[str, dict[str, float]], out_dir: str | Path, dataset: str,
                  meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``metrics_<dataset>.json`` and ``.md`` atomically; merge with splits already in the JSON file."""
    out_dir = Path(out_dir)
    stem = f"metrics_{dataset}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    splits: dict[str, dict[str, float]] = {}
    if json_path.exists():  # evaluating one split must not erase the others evaluated before
        try:
            splits = dict(json.loads(json_path.read_text()).get("splits", {}))
        except (json.JSONDecodeError, AttributeError):
            splits = {}
    splits.update(results)
    atomic_write_json(json_path, {**meta, "dataset": dataset, "splits": splits}, indent=2)
    notes = (f"\n\nmIoU/oIoU and P@X in %, P@X = share of sentences with IoU {meta.get('precision_rule', '> X')}; "
             f"threshold {meta.get('threshold')}, scored at {meta.get('eval_resolution')} resolution; "
             f"checkpoint `{meta.get('checkpoint')}`.\n")
    atomic_write_text(md_path, format_table(splits, title=f"{meta.get('model', 'model')} on {dataset}") + notes)
    return json_path, md_path


# ----------------------------------------------------------------------------------------------------- overlays
def _tint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.5) -> np.ndarray:
    out = image.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def _fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask.astype(bool)
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) >= 128


def draw_overlay(image: np.ndarray, sentence: str, pred: np.ndarray, target: np.ndarray, panel: int = 256) -> Image.Image:
    """Image | prediction (green) | ground truth (yellow), the expression and the IoU written above."""
    h, w = image.shape[:2]
    pred, target = _fit_mask(pred, h, w), _fit_mask(target, h, w)
    union = int((pred | target).sum())
    iou = (int((pred & target).sum()) / union) if union else 1.0
    scale = panel / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    panels = [image, _tint(image, pred, (0, 220, 0)), _tint(image, target, (255, 230, 0))]
    panels = [Image.fromarray(p).resize(size, Image.NEAREST) for p in panels]
    font = ImageFont.load_default()
    band = 34
    canvas = Image.new("RGB", (3 * size[0] + 8, size[1] + band), (255, 255, 255))
    for k, p in enumerate(panels):
        canvas.paste(p, (k * (size[0] + 4), band))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), f'"{sentence}"', fill=(0, 0, 0), font=font)
    draw.text((4, 18), f"image | prediction (green) | ground truth (yellow)   IoU {iou:.2f}", fill=(60, 60, 60),
              font=font)
    return canvas


def save_overlays(ds: ReferDataset, overlays: dict[str, list[dict[str, Any]]], out_dir: str | Path) -> list[Path]:
    """One PNG per kept sample under ``out_dir/<split>/``."""
    written = []
    for split, samples in overlays.items():
        for k, sample in enumerate(samples):
            img = draw_overlay(ds.load_image(sample["image_id"]), sample["sentence"], sample["pred"],
                               sample["target"])
            buffer = io.BytesIO()
            img.save(buffer, format="PNG")
            written.append(atomic_write_bytes(Path(out_dir) / split / f"{k:02d}.png", buffer.getvalue()))
    return written


# ------------------------------------------------------------------------------------------------------ running
def evaluate_splits(trainer: L.Trainer, lit: RISLitModule, datamodule: RISDataModule, splits: Sequence[str] | None,
                    out_dir: str | Path | None, ckpt_path: str | None = None, dataset_label: str | None = None,
                    checkpoint_label: str | None = None, verbose: bool = True) -> dict[str, dict[str, float]]:
    """Score ``splits`` (``None``: all eval splits) with ``trainer.test``; on rank 0 print and write the results.

    ``ckpt_path`` is passed to ``trainer.test`` (e.g. ``"best"`` right after fitting); ``out_dir=None`` writes
    nothing. Returns ``{split: {mIoU, oIoU, P@0.5, ..., n}}`` (fractions; same on every rank).
    """
    splits = list(splits) if splits else datamodule.eval_splits
    datamodule.test_splits_override = splits
    lit.set_test_splits(splits)
    trainer.test(lit, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    results = dict(lit.test_results)
    if not trainer.is_global_zero:
        return results
    dataset = dataset_label or datamodule.dataset_name
    model_name = lit.model.config.get("name", lit.model.model_type)
    if verbose:
        print()
        print(format_table(results, title=f"{model_name} on {dataset}"))
    if out_dir is not None:
        meta = {"checkpoint": checkpoint_label or str(ckpt_path), "model": model_name,
                "threshold": lit.threshold, "eval_resolution": lit.eval_resolution,
                "precision_rule": "> X (strict, as CRIS)", "data_root": str(datamodule.data_root)}
        json_path, md_path = write_results(results, out_dir, dataset, meta)
        if lit.overlays:
            save_overlays(datamodule.human_dataset, lit.overlays, Path(out_dir) / f"overlays_{dataset}")
        if verbose:
            print(f"\nwrote {json_path} and {md_path}")
    return results


def dataset_label(name: str, split_by: str | None) -> str:
    """``refcocog`` for the default partition, ``refcocog_google`` for another one (used in file names)."""
    from pseudo_ris.data.refer import DATASETS

    spec = DATASETS.get(name)
    if split_by is None or (spec is not None and spec.split_by == split_by) or spec is None:
        return name
    return f"{name}_{split_by}"


def evaluate_checkpoint(cfg: Any) -> dict[str, dict[str, float]]:
    """``conf/evaluate.yaml`` -> rebuild the model from ``cfg.ckpt``, score the split(s), print and write results."""
    from ris_models.lit_module import load_checkpoint
    from ris_models.prepare import resolve_data
    from ris_models.training import build_trainer
    from ris_models.validation import check_evaluate_config

    check_evaluate_config(cfg)  # options and the checkpoint file, before any data is built
    overrides = {k: cfg.get(k) for k in ("threshold", "eval_resolution", "num_overlays") if cfg.get(k) is not None}
    ckpt = Path(str(cfg["ckpt"])).expanduser()
    lit = load_checkpoint(ckpt, **overrides)
    info = lit.data_info
    ds_cfg = cfg.get("dataset")
    if ds_cfg is None:
        if "dataset" not in info:
            raise CheckpointDataError(f"checkpoint {ckpt} does not say which dataset it was trained on; "
                                      "pass dataset=<name>")
        name, split_by, eval_splits = info["dataset"], info.get("split_by"), None
    else:
        name, split_by, eval_splits = ds_cfg["name"], ds_cfg.get("split_by"), ds_cfg.get("eval_splits")
    data_root = cfg.get("data_root")
    if data_root is None and info.get("dataset") == name and info.get("data_root") \
            and Path(info["data_root"]).is_dir():
        data_root = info["data_root"]
    resolved = resolve_data({"dataset": {"name": name}, "data_root": data_root,
                             "cache_dir": cfg.get("cache_dir", "~/.cache/pseudo_ris"), "synthref": cfg.get("synthref")})
    model = lit.model
    dm = RISDataModule(resolved.data_root, name, split_by=split_by, mode="human", input_size=model.input_size,
                       image_mean=model.image_mean, image_std=model.image_std, eval_splits=eval_splits,
                       batch_size=int(cfg.get("batch_size", 32)), num_workers=int(cfg.get("num_workers", 0)),
                       resize_mode=info.get("resize_mode", "letterbox"), limit_eval=cfg.get("limit_eval"))
    split = cfg.get("split", "all")
    splits = None if split in (None, "all") else [str(split)]
    if splits and splits[0] not in dm.human_dataset.splits:
        raise CheckpointDataError(f"split {split!r} not in {name} (splits: {dm.human_dataset.splits})")
    out_dir = Path(str(cfg["out_dir"])).expanduser() if cfg.get("out_dir") else ckpt.parent
    trainer, _ = build_trainer({"trainer": cfg["trainer"], "epochs": 1}, out_dir, logger=False, monitor=None)
    return evaluate_splits(trainer, lit, dm, splits, out_dir, dataset_label=dataset_label(name, dm.human_dataset.split_by),
                           checkpoint_label=str(ckpt))


class CheckpointDataError(PseudoRISError):
    """The evaluation data cannot be determined or does not have the requested split."""
