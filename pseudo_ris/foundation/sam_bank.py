"""Crops of a tiny SAM's own masks, for training the captioner on what pseudo-labelling shows it.

The tiny CoCa trained on exact object masks names shapes far worse on the automatic masks it captions during
pseudo-labelling (held-out objects, greedy shape word: 0.89 on exact crops, 0.69 on the shipped SAM's masks), and
synthetic mask errors (`pseudo_ris.foundation.data.sam_like_mask`) did not close that gap. The bank holds the real
thing: the automatic masks of the shipped tiny SAM, at the main job's settings, on scenes of a foundation stream of
their own (never a SynthRef image), each matched one-to-one to the object it covers (`match_one_to_one`). A CoCa
recipe with ``sam_bank_share`` > 0 draws that share of every batch's crops from the bank; captions still come from
the matched object's true attributes.

The bank is a pure function of (scenes, seed, scene config, SAM settings), built once per training directory and
stored as ``sam_bank.npz`` (atomically; loaded without pickle), so a resumed run sees the same crops.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..data.errors import PseudoRISError
from ..data.io import atomic_write_with
from .config import GenericCaptionConfig
from .data import CaptionedCrops, CocaBatch, object_views, scene_at

BANK_NAME = "sam_bank.npz"
BANK_STREAM = "coca_sam_bank"


class SamBankError(PseudoRISError):
    """A bank file that is unreadable or was built with other settings."""


@dataclass
class SamBank:
    """Matched automatic masks: ``masks[i]`` covers object ``object_index[i]`` of scene ``scene_index[i]``."""

    scene_index: np.ndarray   # int64 [N]
    object_index: np.ndarray  # int64 [N]
    masks: np.ndarray         # bool [N, H, W]
    key: str                  # hash of the build settings

    def __len__(self) -> int:
        return int(len(self.scene_index))

    def by_scene(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for row, scene in enumerate(self.scene_index.tolist()):
            out.setdefault(int(scene), []).append(row)
        return out


def bank_key(scenes: int, seed: int, scene_cfg: Mapping[str, Any] | None, sam_settings: Mapping[str, Any],
             min_iou: float, sam_checkpoint: str | None) -> str:
    values = {"scenes": int(scenes), "seed": int(seed), "scene": dict(scene_cfg or {}), "sam": dict(sam_settings),
              "min_iou": float(min_iou), "checkpoint": sam_checkpoint or "shipped"}
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def build_sam_bank(scenes: int, seed: int = 0, scene_cfg: Mapping[str, Any] | None = None,
                   sam_checkpoint: str | None = None, sam_settings: Mapping[str, Any] | None = None,
                   min_iou: float = 0.5, progress: bool = True) -> SamBank:
    """Run the tiny SAM (``sam_checkpoint``, default the shipped one) on ``scenes`` scenes of the bank stream."""
    from tqdm.auto import tqdm

    from .evaluate import SAM_CROP_SETTINGS, _shipped_sam_source, sam_crop_masks

    settings = {**SAM_CROP_SETTINGS, **(sam_settings or {})}
    source = _shipped_sam_source(sam_checkpoint, settings)
    scene_ids, object_ids, masks = [], [], []
    with torch.inference_mode():
        for index in tqdm(range(int(scenes)), desc="SAM bank", unit="scene", disable=not progress):
            found, objects = sam_crop_masks(source, scene_at(BANK_STREAM, seed, index, dict(scene_cfg or {})),
                                            min_iou)
            scene_ids += [index] * len(objects)
            object_ids += objects
            masks += list(found)
    shape = masks[0].shape if masks else (0, 0)
    return SamBank(np.asarray(scene_ids, np.int64), np.asarray(object_ids, np.int64),
                   np.stack(masks) if masks else np.zeros((0,) + shape, bool),
                   bank_key(scenes, seed, scene_cfg, settings, min_iou, sam_checkpoint))


def save_sam_bank(bank: SamBank, path: str | Path) -> Path:
    """Atomic ``.npz``: the masks bit-packed, the build key as a plain string array."""
    def write(handle: Any) -> None:
        np.savez(handle, scene_index=bank.scene_index, object_index=bank.object_index,
                 masks=np.packbits(bank.masks.reshape(len(bank), -1), axis=1),
                 shape=np.asarray(bank.masks.shape, np.int64), key=np.asarray(bank.key))
    return atomic_write_with(path, write)


def load_sam_bank(path: str | Path) -> SamBank:
    try:
        with np.load(path, allow_pickle=False) as data:
            shape = tuple(int(v) for v in data["shape"])
            n = shape[0]
            flat = np.unpackbits(data["masks"], axis=1)[:, : int(np.prod(shape[1:]))] if n else np.zeros((0, 0))
            return SamBank(data["scene_index"].astype(np.int64), data["object_index"].astype(np.int64),
                           flat.reshape(shape).astype(bool), str(data["key"]))
    except (OSError, KeyError, ValueError) as exc:
        raise SamBankError(f"{path}: not a readable SAM bank ({exc}); delete it to rebuild") from None


def load_or_build_sam_bank(path: str | Path, *, scenes: int, seed: int, scene_cfg: Mapping[str, Any] | None,
                           sam_checkpoint: str | None = None, sam_settings: Mapping[str, Any] | None = None,
                           min_iou: float = 0.5, progress: bool = True) -> SamBank:
    """The bank at ``path`` if it was built with these settings, else build and store it; another bank is refused
    (it would silently change a resumed run's data)."""
    from .evaluate import SAM_CROP_SETTINGS

    key = bank_key(scenes, seed, scene_cfg, {**SAM_CROP_SETTINGS, **(sam_settings or {})}, min_iou, sam_checkpoint)
    path = Path(path)
    if path.is_file():
        bank = load_sam_bank(path)
        if bank.key != key:
            raise SamBankError(f"{path} was built with other settings (key {bank.key}, wanted {key}); use another "
                               "output directory or delete the file")
        return bank
    bank = build_sam_bank(scenes, seed, scene_cfg, sam_checkpoint, sam_settings, min_iou, progress)
    save_sam_bank(bank, path)
    return bank


def sam_bank_batch(bank: SamBank, groups: dict[int, list[int]], rng: np.random.Generator, size: int, count: int,
                   objects_per_scene: int, caption_cfg: GenericCaptionConfig, prompt_prob: float, seed: int,
                   scene_cfg: Mapping[str, Any] | None) -> CocaBatch:
    """``count`` crops of bank masks (up to ``objects_per_scene`` per drawn scene, one random view each), captioned
    from their objects' true attributes like `coca_batch`; ``groups`` = ``bank.by_scene()``."""
    if not groups:
        raise SamBankError("the SAM bank holds no matched mask: the SAM finds no object at these settings")
    scenes = sorted(groups)
    crops = CaptionedCrops(caption_cfg, prompt_prob)
    while len(crops) < count:
        index = scenes[int(rng.integers(len(scenes)))]
        rows = groups[index]
        take = min(objects_per_scene, len(rows), count - len(crops))
        chosen = [rows[int(k)] for k in rng.choice(len(rows), size=take, replace=False)]
        scene = scene_at(BANK_STREAM, seed, index, dict(scene_cfg or {}))
        all_views = object_views(scene.image, bank.masks[chosen], size)
        for row, bank_row in enumerate(chosen):
            crops.add(all_views[row], scene.objects[int(bank.object_index[bank_row])], rng)
    return crops.build()


def concat_batches(a: CocaBatch, b: CocaBatch) -> CocaBatch:
    return CocaBatch(torch.cat([a.images, b.images]), a.captions + b.captions, a.texts + b.texts,
                     a.stated + b.stated, a.objects + b.objects, a.views + b.views)
