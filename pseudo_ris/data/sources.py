"""Open a dataset by name: the REFER layout (RefCOCO/+/g, SynthRef, pseudo labels) or VGPhraseCut."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import phrasecut
from .refer import ReferDataset


def open_dataset(data_root: str | Path, dataset: str, split_by: str | None = None,
                 splits: Sequence[str] | None = None, image_dir: str | Path | None = None) -> ReferDataset:
    """``dataset`` under ``data_root``; ``splits`` limits which VGPhraseCut files are read (REFER reads all)."""
    if dataset == phrasecut.NAME:
        return phrasecut.load_phrasecut(data_root, splits or phrasecut.DEFAULT_SPLITS)
    return ReferDataset(data_root, dataset, split_by=split_by, image_dir=image_dir)
