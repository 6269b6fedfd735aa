"""Scoring masks predicted by any model: a folder of ``<sent_id>.png`` or a COCO-RLE JSON file.

Formats:

* a folder holding one PNG per sentence, named ``<sent_id>.png``, at the original image size; any non-zero pixel is
  foreground (0/255 and 0/1 masks both work); other files are ignored;
* a JSON file: a list of ``{"sent_id": int, "segmentation": <COCO RLE>}`` records, or an object mapping each
  sent_id to its RLE (``{"size": [h, w], "counts": str or list}``).

Before any mask is decoded, the ids are matched against the sentences of the scored split(s): missing and extra
ids are listed (counts and the first few); a partial set is refused unless ``allow_partial``; a mask whose size is
not its image's is an error naming the file (or the sent_id in the JSON). Masks are then scored with the
evaluation protocol's rules, at the original size, or at the protocol's input size with targets and predictions
resized alike (its ``resize_mode`` and ``target_resize``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.masks import decode_segmentation
from pseudo_ris.data.refer import ReferDataset, ReferSample
from ris_models.eval_transforms import resize_mask_nearest
from ris_models.metrics import RISMetrics, metrics_to_floats
from ris_models.protocol import EvalProtocol
from ris_models.transforms import resize_mask, resize_meta

SHOWN = 5  # ids listed in a message


class PredictionsError(PseudoRISError):
    """External predictions that cannot be scored: unreadable, wrongly named or sized, or an incomplete set."""


@dataclass(frozen=True)
class Predictions:
    """Where each sentence's mask is: ``pngs[sent_id]`` (a file) or ``rles[sent_id]`` (a COCO RLE)."""

    source: Path
    pngs: dict[int, Path]
    rles: dict[int, dict]

    @property
    def ids(self) -> set[int]:
        return set(self.pngs) | set(self.rles)

    def size_of(self, sent_id: int) -> tuple[int, int]:
        """(height, width) without decoding the mask."""
        if sent_id in self.pngs:
            try:
                with Image.open(self.pngs[sent_id]) as img:
                    w, h = img.size
            except OSError as exc:
                raise PredictionsError(f"prediction {self.pngs[sent_id]} is not a readable image: {exc}") from exc
            return h, w
        h, w = (int(v) for v in self.rles[sent_id]["size"])
        return h, w

    def where(self, sent_id: int) -> str:
        return str(self.pngs[sent_id]) if sent_id in self.pngs else f"{self.source} (sent_id {sent_id})"

    def mask(self, sent_id: int) -> np.ndarray:
        """bool ``[H, W]``."""
        if sent_id in self.pngs:
            try:
                with Image.open(self.pngs[sent_id]) as img:
                    return np.asarray(img.convert("L")) > 0
            except OSError as exc:
                raise PredictionsError(f"prediction {self.pngs[sent_id]} is not a readable image: {exc}") from exc
        rle = self.rles[sent_id]
        try:
            h, w = (int(v) for v in rle["size"])
            return decode_segmentation(rle, h, w)
        except Exception as exc:  # pycocotools raises bare errors on malformed RLE
            raise PredictionsError(f"{self.where(sent_id)}: malformed RLE ({exc})") from exc


def load_predictions(path: str | Path) -> Predictions:
    """Index a folder of ``<sent_id>.png`` or a COCO-RLE JSON file (no mask decoded yet)."""
    path = Path(path).expanduser()
    if path.is_dir():
        pngs: dict[int, Path] = {}
        for file in sorted(path.iterdir()):
            if file.suffix.lower() != ".png":
                continue
            try:
                sent_id = int(file.stem)
            except ValueError:
                raise PredictionsError(f"prediction file {file} is not named <sent_id>.png") from None
            if sent_id in pngs:
                raise PredictionsError(f"sent_id {sent_id} has two files: {pngs[sent_id]} and {file}")
            pngs[sent_id] = file
        return Predictions(path, pngs, {})
    if not path.is_file():
        raise PredictionsError(f"predictions {path} not found (a folder of <sent_id>.png or a COCO-RLE .json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PredictionsError(f"predictions {path} is not a JSON file: {exc}") from exc
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        try:
            items = [(rec["sent_id"], rec["segmentation"]) for rec in data]
        except (TypeError, KeyError):
            raise PredictionsError(f"predictions {path}: every record needs 'sent_id' and 'segmentation'") from None
    else:
        raise PredictionsError(f"predictions {path}: expected a list of records or an object of sent_id -> RLE")
    rles: dict[int, dict] = {}
    for key, rle in items:
        try:
            sent_id = int(key)
        except (TypeError, ValueError):
            raise PredictionsError(f"predictions {path}: sent_id {key!r} is not an integer") from None
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle or len(rle["size"]) != 2:
            raise PredictionsError(f"predictions {path} (sent_id {sent_id}): expected a COCO RLE "
                                   "{'size': [h, w], 'counts': ...}")
        if sent_id in rles:
            raise PredictionsError(f"predictions {path}: sent_id {sent_id} appears twice")
        rles[sent_id] = rle
    return Predictions(path, {}, rles)


def _listing(ids: Sequence[int]) -> str:
    ids = sorted(ids)
    more = f", ... ({len(ids) - SHOWN} more)" if len(ids) > SHOWN else ""
    return ", ".join(str(i) for i in ids[:SHOWN]) + more


def match_predictions(preds: Predictions, samples: dict[str, list[ReferSample]], allow_partial: bool
                      ) -> tuple[dict[str, list[ReferSample]], list[str]]:
    """Samples that have a prediction, per split, and notes on missing / extra ids.

    Raises ``PredictionsError`` when ids are missing and ``allow_partial`` is false, or nothing is left to score.
    """
    wanted = {s.sent_id for group in samples.values() for s in group}
    missing = sorted(wanted - preds.ids)
    extra = sorted(preds.ids - wanted)
    notes = []
    if extra:
        notes.append(f"{len(extra)} prediction id(s) not among the scored sentences (ignored): {_listing(extra)}")
    if missing:
        text = f"{len(missing)} of {len(wanted)} sentences have no prediction: {_listing(missing)}"
        if not allow_partial:
            raise PredictionsError(f"{preds.source}: {text}; pass allow_partial=true to score the others")
        notes.append(text + " (allow_partial: scored without them)")
    kept = {split: [s for s in group if s.sent_id in preds.ids] for split, group in samples.items()}
    if not any(kept.values()):
        raise PredictionsError(f"{preds.source}: none of the {len(wanted)} sentences has a prediction")
    return kept, notes


def check_sizes(preds: Predictions, ds: ReferDataset, samples: dict[str, list[ReferSample]]) -> None:
    """Every prediction has its image's size (read from headers / RLE sizes: nothing decoded)."""
    for group in samples.values():
        for s in group:
            image = ds.images[int(s.image_id)]
            want = (int(image["height"]), int(image["width"]))
            got = preds.size_of(s.sent_id)
            if got != want:
                raise PredictionsError(f"{preds.where(s.sent_id)}: mask is {got[0]}x{got[1]} (HxW) but image "
                                       f"{s.image_id} is {want[0]}x{want[1]}")


def _at_scoring_size(mask: np.ndarray, protocol: EvalProtocol) -> torch.Tensor:
    if protocol.score_at == "original":
        return torch.from_numpy(mask)
    size = int(protocol.input_size)
    meta = resize_meta(mask.shape[0], mask.shape[1], size, protocol.resize_mode or "letterbox")
    return resize_mask_nearest(mask, meta, size) if protocol.target_resize == "nearest" else \
        resize_mask(mask, meta, size)


def score_predictions(preds: Predictions, ds: ReferDataset, samples: dict[str, list[ReferSample]],
                      protocol: EvalProtocol, progress: bool = False) -> dict[str, dict[str, float]]:
    """``{split: {metric: value, n}}`` with ``protocol``'s scoring rules (``samples`` already matched)."""
    from tqdm.auto import tqdm

    if protocol.score_at == "input" and protocol.input_size is None:
        raise PredictionsError(f"protocol {protocol.name!r} scores at the model's input size, unknown for external "
                               "masks: pass eval.input_size=<px> (e.g. 480 for LAVT)")
    out: dict[str, dict[str, float]] = {}
    for split, group in samples.items():
        metric = RISMetrics(protocol.thresholds, rules=protocol.rules)
        for s in tqdm(group, desc=f"scoring {split}", unit="sent", disable=not progress):
            pred, target = preds.mask(s.sent_id), ds.ann_mask(s.ann_id)
            metric.update(_at_scoring_size(pred, protocol), _at_scoring_size(target, protocol))
        values = metrics_to_floats(metric.compute())
        out[split] = {**{k: v for k, v in values.items() if k in protocol.metric_keys}, "n": len(group)}
    return out
