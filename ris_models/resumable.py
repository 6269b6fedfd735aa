"""What a checkpoint needs beyond weights and optimiser so a killed run continues exactly.

* **Data order.** `ResumableSampler` draws each epoch's permutation from its own generator seeded by
  ``(seed, epoch)`` (never the global one) and remembers how many batches of the current epoch the training loop
  has consumed. The data module saves that position in every checkpoint and hands it to the sampler before any
  loader is built, so a mid-epoch step checkpoint resumes at the exact next batch. (Lightning's own stateful-loader
  restore comes too late: ``configure_optimizers`` asking for the number of steps already builds the training
  iterator.) `ResumableDataLoader` also exposes the position, so Lightning knows the loader is resumable. The
  position advances only when a batch has been *trained on* (`DataPositionCallback`), not when a prefetching
  loader pulls indices.
* **Per-draw randomness.** The sampler yields ``(epoch, index)`` keys; the dataset derives its random choices (which
  sentence of a ref, flips) from ``(seed, epoch, index)``, so they do not depend on workers or prefetching.
* **Global random states.** `RNGStateCallback` saves torch (CPU and CUDA), numpy and ``random`` states with every
  checkpoint, as tensors and plain lists (``torch.load(weights_only=True)`` accepts them), and restores them just
  before training continues (dropout draws the same masks as in an uninterrupted run).
"""

from __future__ import annotations

import random
from typing import Any, Iterator, NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: distinct (seed, epoch) pairs get unrelated streams


class DrawKey(NamedTuple):
    """What the training dataset is indexed with: the item and the epoch it is drawn in."""

    epoch: int
    index: int


def draw_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one draw of one item: a pure function of ``(seed, epoch, index)``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableSampler(Sampler[DrawKey]):
    """Seeded per-epoch order (shuffled or not), split over DDP ranks, resumable at a batch boundary.

    Like ``DistributedSampler``, the permutation is padded by repeating its start so that every rank gets
    ``ceil(n / world)`` items; rank ``r`` takes positions ``r, r + world, ...``.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, shuffle: bool = True) -> None:
        if num_items <= 0:
            raise ValueError("ResumableSampler needs at least one item")
        self.num_items, self.batch_size = int(num_items), int(batch_size)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.epoch = 0
        self.consumed_batches = 0  # of the current epoch, trained on

    def _per_rank(self) -> int:
        return -(-self.num_items // _world()[1])

    def __len__(self) -> int:
        return self._per_rank()

    def order(self, epoch: int) -> list[int]:
        """This rank's item indices for ``epoch``."""
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * _SEED_MIX + epoch) % (2 ** 63))
            perm = torch.randperm(self.num_items, generator=g).tolist()
        else:
            perm = list(range(self.num_items))
        rank, world = _world()
        total = self._per_rank() * world
        perm = (perm * (-(-total // len(perm))))[:total]
        return perm[rank:total:world]

    def _normalise(self) -> None:
        if self.consumed_batches * self.batch_size >= self._per_rank():  # a finished epoch: the next one
            self.epoch, self.consumed_batches = self.epoch + 1, 0

    def __iter__(self) -> Iterator[DrawKey]:
        self._normalise()
        epoch = self.epoch
        for index in self.order(epoch)[self.consumed_batches * self.batch_size:]:
            yield DrawKey(epoch, index)

    def batch_done(self) -> None:
        """One batch of the current epoch was trained on."""
        self.consumed_batches += 1

    def epoch_done(self) -> None:
        """The training loop ended the epoch (possibly early, e.g. ``limit_train_batches``)."""
        if self.consumed_batches > 0:
            self.epoch, self.consumed_batches = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed_batches": self.consumed_batches, "seed": self.seed,
                "num_items": self.num_items, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "num_items", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"the checkpoint's data order was made with {key}={state[key]}, this run has "
                                 f"{getattr(self, key)}: it is another experiment")
        self.epoch, self.consumed_batches = int(state["epoch"]), int(state["consumed_batches"])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position (its `ResumableSampler`'s) is saved in and restored from checkpoints."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


def _train_sampler(trainer: L.Trainer) -> ResumableSampler | None:
    loaders = trainer.train_dataloader
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        if isinstance(getattr(loader, "sampler", None), ResumableSampler):
            return loader.sampler
    return None


class DataPositionCallback(L.Callback):
    """Advances the training sampler after each trained batch and at each epoch end (before checkpoints)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sampler = _train_sampler(trainer)
        if sampler is not None:
            sampler.batch_done()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sampler = _train_sampler(trainer)
        if sampler is not None:
            sampler.epoch_done()


# ------------------------------------------------------------------------------------------------- RNG states
def collect_rng_states() -> dict[str, Any]:
    """Global random states as tensors and plain lists (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of `collect_rng_states`."""
    torch.set_rng_state(states["torch"].cpu())
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


class RNGStateCallback(L.Callback):
    """Saves the global random states with every checkpoint; restores them when training resumes.

    The states are applied at ``on_train_start`` (after model, optimiser and data loaders are set up), which in a
    resumed run is the moment right before the next training batch, as in the uninterrupted run.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is not None:
            restore_rng_states(self._pending)
            self._pending = None
