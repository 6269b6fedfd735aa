"""Image sources for generation: a REFER dataset's training images, a folder, or SynthRef's unlabelled pool.

Each source yields `ImageItem`s in a fixed order (sorted ids / paths) so that ``shard i of n`` (items ``i::n``) is
stable across restarts and machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.generation.pipeline import ImageItem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageSourceError(PseudoRISError):
    """An image source is misconfigured (missing folder, unknown split, empty selection)."""


@dataclass
class ImageSource:
    items: list[ImageItem]
    image_dir: Path  # item.file_name is relative to this
    dataset: Any = None  # the ReferDataset, when the source is one (needed by masks=gt)
    description: str = ""

    def shard(self, shard: int, num_shards: int) -> list[ImageItem]:
        return self.items[shard::num_shards]


def refer_source(dataset: Any, split: str | None = "train") -> ImageSource:
    """Images of ``dataset`` referenced by refs of ``split`` (pseudo-labels are made on training images); a dataset
    whose refs carry no such split (an unlabelled pool) or ``split=None`` yields all its images."""
    ids: set[int] | None = None
    if split is not None and split in dataset.splits:
        ids = {int(r["image_id"]) for r in dataset.refs_in_split(split)}
    elif split is not None and dataset.refs:
        raise ImageSourceError(f"split {split!r} not in {dataset.refs_path} (splits: {dataset.splits})")
    chosen = sorted(i for i in dataset.images if ids is None or i in ids)
    items = [ImageItem(i, dataset.images[i]["file_name"], dataset.image_path(i)) for i in chosen]
    return ImageSource(items, Path(dataset.image_dir), dataset, f"{dataset.name}:{split or 'all'}")


def folder_source(image_dir: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> ImageSource:
    """Every image file under ``image_dir`` (recursive, sorted); ids 1..N in that order."""
    root = Path(image_dir).expanduser()
    if not root.is_dir():
        raise ImageSourceError(f"image folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    items = [ImageItem(i + 1, p.relative_to(root).as_posix(), p) for i, p in enumerate(paths)]
    return ImageSource(items, root, None, f"folder:{root}")


def synthref_pool_source(synthref_root: str | Path) -> ImageSource:
    """SynthRef's unlabelled pool (``synthref_pool``) of a SynthRef build directory."""
    from pseudo_ris.data.refer import ReferDataset
    from pseudo_ris.synthref import POOL_DATASET

    return refer_source(ReferDataset(synthref_root, POOL_DATASET), split=None)
