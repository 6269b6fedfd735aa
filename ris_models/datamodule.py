"""LightningDataModule over the REFER layer: human, pseudo or mixed training labels; every-sentence evaluation.

Training sources (``mode``):

* ``human``: the human-labelled dataset's ``train`` refs (optionally a fraction ``ratio`` of them, see below);
* ``pseudo``: every ref of a generated pseudo-label dataset (``<pseudo_root>/<pseudo_name>``, REFER layout with
  ``refs(pseudo).p``, written by ``python tools/generate.py``);
* ``mixed``: a fraction ``ratio`` of the human train refs plus all pseudo labels (semi-supervised setting of the
  paper, arXiv 2407.07412 Sec. 4): ``ratio=0`` is pseudo only, ``ratio=1`` all human + all pseudo.

The human fraction is sampled **by image**: the distinct images of the train split are shuffled with
``numpy.random.default_rng(subset_seed)`` and the first ``round_half_up(ratio * n_images)`` are kept with all
their refs, so the count is exact and the same seed gives the same subset (and a smaller ratio's images are a
subset of a larger ratio's). Sampling by image keeps every expression of a kept image, like a partially annotated
dataset, and never leaks an image between the labelled and the unlabelled part.

One training item is one **ref** (one mask); each time it is drawn one of its sentences is picked at random
(for pseudo labels: one of the captions kept by the filter; for human refs the same rule, as in the
CRIS/LAVT loaders). An epoch therefore sees every mask once. Evaluation scores **every sentence of every ref**.

Training randomness never touches the global generators: the order comes from a `ResumableSampler` seeded by
``(seed, epoch)`` and each draw's choices (sentence, flip) from ``(seed, epoch, index)``, so a resumed run, any
number of workers and an uninterrupted run all see the same batches (see ``ris_models.resumable``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pseudo_ris.data.errors import PseudoRISError, ReferDataError
from pseudo_ris.data.refer import ReferDataset
from pseudo_ris.data.sources import open_dataset

from .eval_transforms import prepare_eval_sample
from .protocol import EVAL_RESIZE_MODES, TARGET_RESIZES
from .resumable import DrawKey, ResumableDataLoader, ResumableSampler, draw_rng
from .transforms import RESIZE_MODES, resize_image, resize_mask, resize_meta, swap_left_right

MODES = ("human", "pseudo", "mixed")


class DataConfigError(PseudoRISError, ValueError):
    """An invalid data option (mode, ratio, split, missing pseudo-label dataset)."""


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def sample_images_by_ratio(refs: Sequence[dict], ratio: float, seed: int) -> list[dict]:
    """Keep all refs of a seeded random ``round_half_up(ratio * n_images)`` of the images that ``refs`` cover."""
    check_ratio(ratio)
    image_ids = sorted({int(ref["image_id"]) for ref in refs})
    count = _round_half_up(ratio * len(image_ids))
    order = np.random.default_rng(seed).permutation(len(image_ids))
    kept = {image_ids[i] for i in order[:count]}
    return [ref for ref in refs if int(ref["image_id"]) in kept]


def check_ratio(ratio: float) -> float:
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise DataConfigError(f"ratio must be a number in [0, 1], got {ratio!r}") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise DataConfigError(f"ratio must be in [0, 1] (fraction of human-labelled train images), got {ratio}")
    return value


def open_pseudo_dataset(pseudo_root: str | Path | None, pseudo_name: str) -> ReferDataset:
    """Open a generated pseudo-label dataset, or say how to make one."""
    how = (f"generate one with `python tools/generate.py dataset=<dataset> out_dir=<dir>` (writes <dir>/"
           f"{pseudo_name}), then pass `pseudo_root=<dir>` (and `data.pseudo_name=<name>` if you changed its `name`)")
    if pseudo_root is None:
        raise DataConfigError(f"data mode needs pseudo labels but pseudo_root is not set: {how}")
    path = Path(pseudo_root).expanduser() / pseudo_name
    if not path.is_dir():
        raise DataConfigError(f"pseudo-label dataset not found at {path}: {how}")
    try:
        return ReferDataset(pseudo_root, pseudo_name)
    except ReferDataError as exc:
        raise DataConfigError(f"pseudo-label dataset at {path} is unreadable ({exc}); regenerate it: {how}") from exc


# ---------------------------------------------------------------------------------------------------------- items
@dataclass(frozen=True)
class TrainRef:
    """One training mask: which source dataset, which ref."""

    source: int
    ref_id: int


class RISTrainDataset(Dataset):
    """One item per ref; a random sentence per draw; optional horizontal flip with left/right swapped."""

    def __init__(self, sources: Sequence[ReferDataset], items: Sequence[TrainRef], input_size: int,
                 image_mean: Sequence[float], image_std: Sequence[float], resize_mode: str = "letterbox",
                 hflip_prob: float = 0.0, seed: int = 0) -> None:
        if not items:
            raise DataConfigError("no training refs selected (empty dataset, or ratio=0 without pseudo labels)")
        self.sources = list(sources)
        self.items = list(items)
        self.input_size = int(input_size)
        self.mean, self.std = tuple(image_mean), tuple(image_std)
        self.resize_mode = resize_mode
        self.hflip_prob = float(hflip_prob)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: DrawKey | int) -> dict[str, Any]:
        """``key``: a `DrawKey` from the sampler, or a plain index (drawn as in epoch 0)."""
        epoch, index = (key.epoch, key.index) if isinstance(key, DrawKey) else (0, int(key))
        item = self.items[index]
        ds = self.sources[item.source]
        ref = ds.refs_by_id[item.ref_id]
        rng = draw_rng(self.seed, epoch, index)  # this draw's choices, independent of workers and resumes
        sent = ref["sentences"][int(rng.integers(len(ref["sentences"])))]
        sentence = sent.get("sent") or sent.get("raw", "")
        image = ds.load_image(ref["image_id"])
        mask = ds.ref_mask(ref)
        if self.hflip_prob > 0 and float(rng.random()) < self.hflip_prob:
            image, mask = image[:, ::-1], mask[:, ::-1]
            sentence = swap_left_right(sentence)
        meta = resize_meta(image.shape[0], image.shape[1], self.input_size, self.resize_mode)
        return {
            "image": resize_image(np.ascontiguousarray(image), meta, self.input_size, self.mean, self.std),
            "mask": resize_mask(np.ascontiguousarray(mask), meta, self.input_size),
            "sentence": sentence,
            "ref_id": int(ref["ref_id"]),
            "source": item.source,
        }


class RISEvalDataset(Dataset):
    """Every (ref, sentence) pair of one split; keeps the original-size mask for scoring at full resolution."""

    def __init__(self, ds: ReferDataset, split: str, input_size: int, image_mean: Sequence[float],
                 image_std: Sequence[float], resize_mode: str = "letterbox", limit: int | None = None,
                 target_resize: str = "bilinear") -> None:
        self.ds = ds
        self.split = split
        self.samples = ds.samples(split)
        if limit is not None:
            self.samples = self.samples[: int(limit)]
        if not self.samples:
            raise DataConfigError(f"split {split!r} of {ds.name} has no sentences to evaluate")
        self.input_size = int(input_size)
        self.mean, self.std = tuple(image_mean), tuple(image_std)
        self.resize_mode = resize_mode
        self.target_resize = target_resize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        image = self.ds.load_image(s.image_id)
        mask = self.ds.ann_mask(s.ann_id)
        # image, input-resolution target ("mask") and "meta" as the evaluation protocol says
        sample = prepare_eval_sample(image, mask, self.resize_mode, self.input_size, self.mean, self.std,
                                     self.target_resize)
        return {
            **sample,
            "orig_mask": torch.from_numpy(mask),  # original-resolution target (default scoring)
            "sentence": s.sentence,
            "ref_id": s.ref_id,
            "sent_id": s.sent_id,
            "image_id": s.image_id,
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack fixed-size tensors; keep variable-size masks, metadata and strings as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key in ("image", "mask"):
            out[key] = torch.stack(values)
        elif key in ("ref_id", "sent_id", "image_id", "source"):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


# ---------------------------------------------------------------------------------------------------- datamodule
def lone_last_batch(items_per_rank: int, batch_size: int) -> bool:
    """Whether an epoch's last training batch would hold a single sample: BatchNorm cannot train on it (one value
    per channel has no variance; the tiny CRIS stops with a ValueError), so that batch is dropped. Every other
    remainder is kept, so the step count of all other datasets is unchanged."""
    return batch_size > 1 and items_per_rank % batch_size == 1


class RISDataModule(L.LightningDataModule):
    """Training data from human/pseudo/mixed labels and evaluation on the dataset's eval splits.

    Args:
        data_root: REFER data root of the human-labelled dataset (also the evaluation data).
        dataset: dataset name (``refcoco``, ``synthref``, ...); ``split_by`` overrides its refs file (``google``).
        mode: ``human`` | ``pseudo`` | ``mixed``.
        ratio: fraction of human train images used in ``human``/``mixed`` modes (ignored for ``pseudo``).
        pseudo_root, pseudo_name: where the pseudo-label dataset lives (``pseudo``/``mixed`` modes).
        val_splits: splits validated during training (the first one's oIoU selects checkpoints).
        eval_splits: splits of the final evaluation (``None``: every split except ``train``).
        input_size, image_mean, image_std: from the model (``model.input_size`` etc.).
        resize_mode: ``letterbox`` or ``stretch``; hflip_prob: flip probability (words swapped too; 0 = off).
        eval_resize_mode, target_resize: evaluation geometry from the evaluation protocol
            (``ris_models.protocol``; ``eval_resize_mode=None``: as ``resize_mode``).
        subset_seed: seed of the ratio sampling (independent of the training seed on purpose: same subset
            across training seeds unless changed).
        seed: the training seed: data order and per-draw choices (see ``ris_models.resumable``).
        limit_eval: evaluate at most this many sentences per split (quick checks; ``None`` = all).
    """

    def __init__(self, data_root: str | Path, dataset: str, *, input_size: int, image_mean: Sequence[float],
                 image_std: Sequence[float], mode: str = "human", ratio: float = 1.0,
                 pseudo_root: str | Path | None = None, pseudo_name: str = "pseudo", split_by: str | None = None,
                 train_split: str = "train", val_splits: Sequence[str] | None = ("val",),
                 eval_splits: Sequence[str] | None = None, batch_size: int = 8, eval_batch_size: int | None = None,
                 num_workers: int = 0, resize_mode: str = "letterbox", hflip_prob: float = 0.0,
                 subset_seed: int = 0, limit_eval: int | None = None, eval_resize_mode: str | None = None,
                 target_resize: str = "bilinear", seed: int = 0) -> None:
        super().__init__()
        if mode not in MODES:
            raise DataConfigError(f"unknown data mode {mode!r}; expected one of {MODES}")
        if resize_mode not in RESIZE_MODES:
            raise DataConfigError(f"unknown resize_mode {resize_mode!r}; expected one of {RESIZE_MODES}")
        if eval_resize_mode is not None and eval_resize_mode not in EVAL_RESIZE_MODES:
            raise DataConfigError(f"unknown eval resize mode {eval_resize_mode!r}; expected one of "
                                  f"{EVAL_RESIZE_MODES}")
        if target_resize not in TARGET_RESIZES:
            raise DataConfigError(f"unknown target_resize {target_resize!r}; expected one of {TARGET_RESIZES}")
        if not 0.0 <= float(hflip_prob) <= 1.0:
            raise DataConfigError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.ratio = check_ratio(ratio)
        self.data_root = Path(data_root).expanduser()
        self.dataset_name = dataset
        self.split_by = split_by
        self.mode = mode
        self.pseudo_root = pseudo_root
        self.pseudo_name = pseudo_name
        self.train_split = train_split
        self._val_splits = list(val_splits) if val_splits else None
        self._eval_splits = list(eval_splits) if eval_splits else None
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.input_size = int(input_size)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.resize_mode = resize_mode
        self.hflip_prob = float(hflip_prob)
        self.subset_seed = int(subset_seed)
        self.seed = int(seed)
        self.limit_eval = limit_eval
        self.eval_resize_mode = eval_resize_mode or resize_mode  # the evaluation protocol's (default: training's)
        self.target_resize = target_resize
        self._human: ReferDataset | None = None
        self._pseudo: ReferDataset | None = None
        self._train: RISTrainDataset | None = None
        self._train_sampler: ResumableSampler | None = None
        self._pending_position: dict[str, Any] | None = None
        self._eval: dict[str, RISEvalDataset] = {}
        if mode in ("pseudo", "mixed"):
            self.pseudo_dataset  # fail fast, before any model is built or trained

    # ---------------------------------------------------------------------------------------------- datasets
    @property
    def human_dataset(self) -> ReferDataset:
        if self._human is None:
            # which files a multi-file source (VGPhraseCut, evaluation only) reads; REFER files hold every split
            splits = list(dict.fromkeys([*(self._val_splits or []), *(self._eval_splits or [])])) or None
            self._human = open_dataset(self.data_root, self.dataset_name, split_by=self.split_by, splits=splits)
        return self._human

    @property
    def pseudo_dataset(self) -> ReferDataset:
        if self._pseudo is None:
            self._pseudo = open_pseudo_dataset(self.pseudo_root, self.pseudo_name)
        return self._pseudo

    @property
    def val_splits(self) -> list[str]:
        return self._val_splits or self.eval_splits[:1]

    @property
    def eval_splits(self) -> list[str]:
        if self._eval_splits:
            unknown = [s for s in self._eval_splits if s not in self.human_dataset.splits]
            if unknown:
                raise DataConfigError(f"eval split(s) {unknown} not in {self.human_dataset.refs_path} "
                                      f"(splits: {self.human_dataset.splits})")
            return list(self._eval_splits)
        return self.human_dataset.eval_splits

    def train_refs(self) -> list[TrainRef]:
        """The selected training masks (deterministic for a given subset_seed)."""
        items: list[TrainRef] = []
        if self.mode in ("human", "mixed"):
            refs = self.human_dataset.refs_in_split(self.train_split)
            if self.ratio < 1.0:
                refs = sample_images_by_ratio(refs, self.ratio, self.subset_seed)
            items += [TrainRef(0, int(r["ref_id"])) for r in refs if r["sentences"]]
        if self.mode in ("pseudo", "mixed"):
            items += [TrainRef(1, int(r["ref_id"])) for r in self.pseudo_dataset.refs if r["sentences"]]
        return items

    def train_dataset(self) -> RISTrainDataset:
        if self._train is None:
            sources = [self.human_dataset if self.mode != "pseudo" else None,
                       self.pseudo_dataset if self.mode != "human" else None]
            items = self.train_refs()
            for index, ds in enumerate(sources):  # a missing image fails here, not mid-epoch
                if ds is not None:
                    ds.check_image_files(ds.refs_by_id[i.ref_id] for i in items if i.source == index)
            self._train = RISTrainDataset(sources, items, self.input_size, self.image_mean,
                                          self.image_std, self.resize_mode, self.hflip_prob, self.seed)
        return self._train

    def eval_dataset(self, split: str) -> RISEvalDataset:
        if split not in self._eval:
            self.human_dataset.check_image_files(self.human_dataset.refs_in_split(split))
            self._eval[split] = RISEvalDataset(self.human_dataset, split, self.input_size, self.image_mean,
                                               self.image_std, self.eval_resize_mode, self.limit_eval,
                                               self.target_resize)
        return self._eval[split]

    # ------------------------------------------------------------------------------------------- loaders
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset()
        if stage in (None, "fit", "validate"):
            for split in self.val_splits:
                self.eval_dataset(split)

    def _loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        """An evaluation loader (fixed order; its own generator, so creating it never draws from the global one)."""
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # Lightning's default DistributedSampler pads ranks with repeated samples, which would count some
            # sentences twice; this one splits the split exactly (ranks may differ by one batch; fine in eval).
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=collate, drop_last=False,
                          persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(0))

    def train_sampler(self) -> ResumableSampler:
        """The training order and position (one per data module, so every loader built from it continues it)."""
        if self._train_sampler is None:
            self._train_sampler = ResumableSampler(len(self.train_dataset()), self.batch_size, seed=self.seed)
            if self._pending_position is not None:
                self._train_sampler.load_state_dict(self._pending_position)
                self._pending_position = None
        return self._train_sampler

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the training position (epoch, batches trained on)."""
        return {"train_position": self._train_sampler.state_dict()} if self._train_sampler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores the data module before it builds any loader (and before ``configure_optimizers``
        # asks for the number of batches, which already creates the training iterator): the position must be
        # in place by then, so it is kept here rather than only in the loader's own state
        position = state_dict.get("train_position")
        if position is None:
            return
        if self._train_sampler is not None:
            self._train_sampler.load_state_dict(position)
        else:
            self._pending_position = dict(position)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by a `ResumableSampler` (which also splits ranks under DDP; Lightning must not replace it)."""
        dataset = self.train_dataset()
        sampler = self.train_sampler()
        return ResumableDataLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                                   num_workers=self.num_workers, collate_fn=collate,
                                   drop_last=lone_last_batch(len(sampler), self.batch_size),
                                   persistent_workers=self.num_workers > 0,
                                   generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.eval_dataset(s), self.eval_batch_size) for s in self.val_splits]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.eval_dataset(s), self.eval_batch_size) for s in self.test_splits]

    # splits scored by ``trainer.test``; set by the evaluation code (defaults to all eval splits)
    test_splits_override: list[str] | None = None

    @property
    def test_splits(self) -> list[str]:
        return list(self.test_splits_override) if self.test_splits_override else self.eval_splits

    def describe(self) -> dict[str, Any]:
        """A summary for logs: mode, ratio and how many refs/images each source contributes."""
        items = self.train_refs()
        human = [i for i in items if i.source == 0]
        info = {"mode": self.mode, "ratio": self.ratio if self.mode != "pseudo" else None,
                "human_refs": len(human), "pseudo_refs": len(items) - len(human)}
        if human:
            ds = self.human_dataset
            info["human_images"] = len({int(ds.refs_by_id[i.ref_id]["image_id"]) for i in human})
        return info
