"""Checkpoints: atomic writes, a failing write stops the run at once, damaged files are named, best.ckpt exists."""

from __future__ import annotations

import errno
from pathlib import Path

import lightning as L
import pytest
import torch

from pseudo_ris.data.errors import PseudoRISError
from ris_models import checkpoint_io
from ris_models.checkpoint_io import (CheckpointReadError, CheckpointWriteError, atomic_torch_save,
                                      load_checkpoint_file, previous_path)
from ris_models.training import train
from test_train import _StopAt, _train_cfg


def _failing_save(written: bytes, err: int, message: str):
    def save(obj, handle):
        handle.write(written)  # part of the file reached the disk, then the write failed
        raise OSError(err, message)
    return save


def test_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    atomic_torch_save({"step": 2}, path, keep_previous=True)
    assert load_checkpoint_file(previous_path(path)) == {"step": 1}
    good = path.read_bytes()
    monkeypatch.setattr(checkpoint_io.torch, "save", _failing_save(b"PK\x03\x04half", errno.ENOSPC,
                                                                   "No space left on device"))
    with pytest.raises(CheckpointWriteError, match=rf"cannot write checkpoint {path}: No space left on device"):
        atomic_torch_save({"step": 3}, path, keep_previous=True)
    assert path.read_bytes() == good and load_checkpoint_file(path) == {"step": 2}
    assert load_checkpoint_file(previous_path(path)) == {"step": 2}  # kept before the write: the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.prev.ckpt"]


def test_unwritable_checkpoint_stops_training_at_the_first_save(tiny_ris_data, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_io.torch, "save", _failing_save(b"", errno.EROFS, "Read-only file system"))
    steps = []

    class Count(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            steps.append(trainer.global_step)

    run = tmp_path / "run"
    with pytest.raises(CheckpointWriteError, match=rf"{run / 'checkpoints' / 'last.ckpt'}: Read-only file system"):
        train(_train_cfg(tiny_ris_data, run, "checkpoint_every_n_steps=2", "limit_eval=2"), extra_callbacks=[Count()])
    assert steps == [1, 2]  # stopped at the first checkpoint (step 2 of 10), not reported at the end
    assert not list((run / "checkpoints").glob("*.ckpt")) and not list((run / "checkpoints").glob(".*.tmp"))


def test_truncated_last_ckpt_falls_back_to_the_previous_one_or_is_named(tiny_ris_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ("checkpoint_every_n_steps=2", "limit_eval=2", "evaluate_after=false")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_train_cfg(tiny_ris_data, run, *args), extra_callbacks=[_StopAt(7)])
    last = run / "checkpoints" / "last.ckpt"
    prev = previous_path(last)
    assert torch.load(last, weights_only=True)["global_step"] == 6
    assert torch.load(prev, weights_only=True)["global_step"] == 5  # the epoch-end save before it
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # a copy cut short, a disk error, ...
    with pytest.raises(CheckpointReadError, match=rf"cannot read checkpoint {last} \(truncated"):
        load_checkpoint_file(last)
    out = train(_train_cfg(tiny_ris_data, run, *args))
    assert f"{last} is unreadable" in capsys.readouterr().out
    assert out["global_step"] == 10  # resumed from step 5 and finished
    # both damaged: one clear message that names the file and what to do, before any data is read
    (run / "finished.json").unlink()
    for path in (last, prev):
        path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointReadError, match=r"last.ckpt \(truncated.*resume=never"):
        train(_train_cfg(tiny_ris_data, run, *args))


def test_missing_or_foreign_ckpt_path_is_an_error_before_training(tiny_ris_data, tmp_path):
    with pytest.raises(PseudoRISError, match="none.ckpt not found"):
        train(_train_cfg(tiny_ris_data, tmp_path / "a", f"ckpt_path={tmp_path / 'none.ckpt'}"))
    marker = tmp_path / "ran"
    payload = tmp_path / "payload.ckpt"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": {}, "x": Payload()}, payload)
    with pytest.raises(PseudoRISError, match=r"payload.ckpt (refused|\(truncated or not)"):
        train(_train_cfg(tiny_ris_data, tmp_path / "b", f"ckpt_path={payload}"))
    assert not marker.exists()  # loaded weights-only: the payload never ran


def test_best_ckpt_exists_when_no_validation_ran(tiny_ris_data, tmp_path, capsys):
    run = tmp_path / "run"
    out = train(_train_cfg(tiny_ris_data, run, "epochs=1", "trainer.check_val_every_n_epoch=5", "limit_eval=2"))
    best, last = Path(out["best_ckpt"]), Path(out["last_ckpt"])
    assert best == run / "checkpoints" / "best.ckpt" and best.read_bytes() == last.read_bytes()
    assert "no validation ran: best.ckpt is a copy" in capsys.readouterr().out
    assert out["results"]["val"]["n"] == 2
