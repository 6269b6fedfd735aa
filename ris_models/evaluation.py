"""Evaluation outputs: run ``trainer.test`` over splits, print the table, write JSON/Markdown and PNG overlays.

Files written next to the evaluated checkpoint (``<ckpt dir>/``):

* ``metrics_<dataset>.json``: the evaluation protocol (every setting, ``ris_models.protocol``), the checkpoint and
  per-split metrics as fractions; ``metrics_<dataset>_<protocol>.json`` for a protocol other than ``project``, so
  numbers of different protocols never mix in one file;
* ``metrics_<dataset>[_<protocol>].md``: the protocol and the same table in Markdown (percentages);
* ``overlays_<dataset>/<split>/<k>.png``: image | prediction | ground truth with the expression, drawn with PIL.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.locks import directory_lock, is_primary_process
from pseudo_ris.data.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pseudo_ris.data.refer import ReferDataset
from ris_models.datamodule import RISDataModule
from ris_models.lit_module import RISLitModule
from ris_models.metrics import METRIC_KEYS
from ris_models.protocol import EvalProtocol, protocol_from_config

TABLE_KEYS = METRIC_KEYS


def format_table(results: dict[str, dict[str, float]], title: str | None = None,
                 keys: Sequence[str] = TABLE_KEYS) -> str:
    """A Markdown table of percentages, one row per split, columns ``keys`` (also readable in a terminal)."""
    header = ["split", "n", *keys]
    lines = [f"**{title}** ({', '.join(k for k in ('mIoU', 'oIoU') if k in keys)}, P@X in %)", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if k == "split" else "---:" for k in header) + "|")
    for split, values in results.items():
        cells = [split, str(int(values.get("n", 0)))]
        cells += [f"{100.0 * values[k]:.2f}" if k in values else "-" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_stem(dataset: str, protocol: EvalProtocol) -> str:
    """``metrics_<dataset>`` for the project protocol, ``metrics_<dataset>_<protocol>`` for the others."""
    return f"metrics_{dataset}" if protocol.name == "project" else f"metrics_{dataset}_{protocol.name}"


def write_results(results: dict[str, dict[str, float]], out_dir: str | Path, dataset: str,
                  meta: dict[str, Any], protocol: EvalProtocol | None = None) -> tuple[Path, Path]:
    """Write ``<results_stem>.json`` and ``.md`` atomically, the protocol recorded in both.

    Splits already in the JSON file are kept (evaluating one split must not erase the others) when they were
    scored under the same protocol; otherwise they are replaced.
    """
    protocol = protocol or EvalProtocol()
    out_dir = Path(out_dir)
    stem = results_stem(dataset, protocol)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    record = protocol.as_dict()
    splits: dict[str, dict[str, float]] = {}
    if json_path.exists():
        try:
            old = json.loads(json_path.read_text())
            if old.get("protocol") == record:
                splits = dict(old.get("splits", {}))
        except (json.JSONDecodeError, AttributeError):
            splits = {}
    splits.update(results)
    atomic_write_json(json_path, {**meta, "dataset": dataset, "protocol": record, "splits": splits}, indent=2)
    notes = (f"\n\nIn %; P@X = share of sentences with IoU {protocol.precision_rule} X. Source: "
             f"`{meta.get('checkpoint') or meta.get('predictions')}`.\n")
    table = format_table(splits, title=f"{meta.get('model', 'model')} on {dataset}", keys=protocol.metric_keys)
    atomic_write_text(md_path, f"{protocol.describe()}\n\n{table}{notes}")
    return json_path, md_path


def report(results: dict[str, dict[str, float]], protocol: EvalProtocol, title: str) -> str:
    """What a run prints: the protocol above the table."""
    return f"{protocol.describe()}\n\n{format_table(results, title=title, keys=protocol.metric_keys)}"


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
    keys = set(lit.protocol.metric_keys) | {"n"}
    results = {split: {k: v for k, v in values.items() if k in keys} for split, values in lit.test_results.items()}
    if not trainer.is_global_zero:
        return results
    dataset = dataset_label or datamodule.dataset_name
    model_name = lit.model.config.get("name", lit.model.model_type)
    protocol = lit.protocol
    if verbose:
        print()
        print(report(results, protocol, f"{model_name} on {dataset}"))
    if out_dir is not None:
        meta = {"checkpoint": checkpoint_label or str(ckpt_path), "model": model_name,
                "data_root": str(datamodule.data_root)}
        json_path, md_path = write_results(results, out_dir, dataset, meta, protocol)
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


def _evaluation_data(cfg: Any, info: dict[str, Any], what: str) -> tuple[Path, str, str | None, list | None]:
    """(data_root, dataset name, split_by, eval splits) from ``dataset=`` / ``data_root=`` or the checkpoint."""
    from ris_models.prepare import resolve_data
    ds_cfg = cfg.get("dataset")
    if ds_cfg is None:
        if "dataset" not in info:
            raise CheckpointDataError(f"{what} does not say which dataset it belongs to; pass dataset=<name>")
        name, split_by, eval_splits = info["dataset"], info.get("split_by"), None
    else:
        name, split_by, eval_splits = ds_cfg["name"], ds_cfg.get("split_by"), ds_cfg.get("eval_splits")
    data_root = cfg.get("data_root")
    if data_root is None and info.get("dataset") == name and info.get("data_root") \
            and Path(info["data_root"]).is_dir():
        data_root = info["data_root"]
    resolved = resolve_data({"dataset": {"name": name}, "data_root": data_root,
                             "cache_dir": cfg.get("cache_dir", "~/.cache/pseudo_ris"), "synthref": cfg.get("synthref")})
    return resolved.data_root, name, split_by, eval_splits


def _requested_splits(cfg: Any, ds: ReferDataset, eval_splits: Sequence[str] | None) -> list[str]:
    split = cfg.get("split", "all")
    if split in (None, "all"):
        return list(eval_splits) if eval_splits else ds.eval_splits
    if str(split) not in ds.splits:
        raise CheckpointDataError(f"split {split!r} not in {ds.name} (splits: {ds.splits})")
    return [str(split)]


def evaluate(cfg: Any) -> dict[str, dict[str, float]]:
    """``tools/evaluate.py``: a checkpoint (``ckpt=``) or external masks (``predictions=``), exactly one."""
    from ris_models.validation import check_evaluate_config

    check_evaluate_config(cfg)  # options and the checkpoint file, before any data is built or anything written
    if (cfg.get("ckpt") is None) == (cfg.get("predictions") is None):
        raise CheckpointDataError("pass exactly one of ckpt=<checkpoint file> or predictions=<folder of "
                                  "<sent_id>.png | COCO-RLE .json>")
    return evaluate_checkpoint(cfg) if cfg.get("ckpt") is not None else evaluate_predictions(cfg)


def evaluate_checkpoint(cfg: Any) -> dict[str, dict[str, float]]:
    """``conf/evaluate.yaml`` -> rebuild the model from ``cfg.ckpt``, score the split(s), print and write results.

    ``eval=null`` keeps the protocol the checkpoint was trained with; ``eval=<name>`` replaces it.
    """
    from ris_models.lit_module import load_checkpoint
    from ris_models.training import build_trainer

    overrides: dict[str, Any] = {k: cfg.get(k) for k in ("num_overlays",) if cfg.get(k) is not None}
    if cfg.get("eval") is not None:
        overrides["eval_protocol"] = protocol_from_config(cfg.get("eval")).as_dict()  # fails before loading
    ckpt = Path(str(cfg["ckpt"])).expanduser()
    lit = load_checkpoint(ckpt, allow_download=bool(cfg.get("allow_download", False)), **overrides)
    info = lit.data_info
    data_root, name, split_by, eval_splits = _evaluation_data(cfg, info, f"checkpoint {ckpt}")
    model = lit.model
    protocol = lit.protocol
    dm = RISDataModule(data_root, name, split_by=split_by, mode="human", input_size=model.input_size,
                       image_mean=model.image_mean, image_std=model.image_std, eval_splits=eval_splits,
                       batch_size=int(cfg.get("batch_size", 32)), num_workers=int(cfg.get("num_workers", 0)),
                       resize_mode=info.get("resize_mode", "letterbox"), limit_eval=cfg.get("limit_eval"),
                       eval_resize_mode=protocol.resize_mode, target_resize=protocol.target_resize)
    splits = _requested_splits(cfg, dm.human_dataset, None) if cfg.get("split", "all") not in (None, "all") \
        else None
    out_dir = Path(str(cfg["out_dir"])).expanduser() if cfg.get("out_dir") else ckpt.parent
    with contextlib.ExitStack() as stack:
        if is_primary_process():  # one writer per output folder (a training writing there, another evaluation)
            stack.enter_context(directory_lock(out_dir, purpose="write evaluation results into (out_dir=...)"))
        trainer, _ = build_trainer({"trainer": cfg["trainer"], "epochs": 1}, out_dir, logger=False, monitor=None)
        return evaluate_splits(trainer, lit, dm, splits, out_dir,
                               dataset_label=dataset_label(name, dm.human_dataset.split_by),
                               checkpoint_label=str(ckpt))


def evaluate_predictions(cfg: Any) -> dict[str, dict[str, float]]:
    """Score external masks (``predictions=``) on ``dataset``/``split`` with the ``eval`` protocol."""
    from pseudo_ris.data.sources import open_dataset
    from ris_models.predictions import check_sizes, load_predictions, match_predictions, score_predictions

    protocol = protocol_from_config(cfg.get("eval"))
    if protocol.resize_mode is None:
        protocol = replace(protocol, resize_mode="letterbox")
    if cfg.get("dataset") is None:
        raise CheckpointDataError("predictions need dataset=<name> (and data_root=<dir> for real datasets)")
    preds = load_predictions(cfg["predictions"])
    data_root, name, split_by, eval_splits = _evaluation_data(cfg, {}, "predictions")
    split = cfg.get("split", "all")
    wanted = [str(split)] if split not in (None, "all") else (list(eval_splits) if eval_splits else None)
    ds = open_dataset(data_root, name, split_by=split_by, splits=wanted)
    samples = {split: ds.samples(split) for split in _requested_splits(cfg, ds, eval_splits)}
    if cfg.get("limit_eval") is not None:
        samples = {k: v[: int(cfg["limit_eval"])] for k, v in samples.items()}
    samples, notes = match_predictions(preds, samples, bool(cfg.get("allow_partial", False)))
    check_sizes(preds, ds, samples)  # every header read before any mask is decoded
    for note in notes:
        print(f"note: {note}")
    results = score_predictions(preds, ds, samples, protocol, progress=True)
    label = dataset_label(name, ds.split_by)
    print()
    print(report(results, protocol, f"{preds.source.name} on {label}"))
    out_dir = Path(str(cfg["out_dir"])).expanduser() if cfg.get("out_dir") else \
        (preds.source if preds.source.is_dir() else preds.source.parent)
    meta = {"predictions": str(preds.source), "model": preds.source.name, "data_root": str(data_root),
            "notes": notes + ["external masks scored as given: the protocol's input resize, upsampling and "
                              "decision settings do not apply"]}
    json_path, md_path = write_results(results, out_dir, label, meta, protocol)
    print(f"\nwrote {json_path} and {md_path}")
    return results


class CheckpointDataError(PseudoRISError):
    """The evaluation data cannot be determined or does not have the requested split."""
