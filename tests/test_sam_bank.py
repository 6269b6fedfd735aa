"""The captioner's bank of automatic SAM masks: masks that really cover their objects, a file that round-trips and
refuses other settings, batches captioned from the matched objects, and the CoCa recipe drawing its share from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pseudo_ris.foundation.config import CocaTrainConfig, FoundationConfigError, GenericCaptionConfig, make_config
from pseudo_ris.foundation.data import compatible, scene_at
from pseudo_ris.foundation.sam_bank import (BANK_NAME, BANK_STREAM, SamBankError, build_sam_bank, load_or_build_sam_bank,
                                            load_sam_bank, sam_bank_batch, save_sam_bank)


@pytest.fixture(scope="module")
def bank():
    return build_sam_bank(6, seed=0, progress=False)


def test_bank_masks_cover_their_objects_one_to_one(bank):
    assert len(bank) >= 6  # the shipped SAM finds most objects of 6 scenes
    seen = set()
    for scene_index, object_index, mask in zip(bank.scene_index, bank.object_index, bank.masks):
        obj = scene_at(BANK_STREAM, 0, int(scene_index)).objects[int(object_index)].mask
        iou = (obj & mask).sum() / (obj | mask).sum()
        assert iou >= 0.5
        assert (int(scene_index), int(object_index)) not in seen  # one mask per object
        seen.add((int(scene_index), int(object_index)))
    # automatic masks, not the exact ones (else the bank would teach nothing new)
    exact = [scene_at(BANK_STREAM, 0, int(s)).objects[int(o)].mask for s, o in zip(bank.scene_index, bank.object_index)]
    assert any((m != e).any() for m, e in zip(bank.masks, exact))


def test_bank_file_round_trips_and_refuses_other_settings(bank, tmp_path):
    path = save_sam_bank(bank, tmp_path / BANK_NAME)
    back = load_sam_bank(path)
    assert back.key == bank.key and np.array_equal(back.masks, bank.masks)
    assert np.array_equal(back.scene_index, bank.scene_index) and np.array_equal(back.object_index, bank.object_index)
    same = load_or_build_sam_bank(path, scenes=6, seed=0, scene_cfg=None, progress=False)  # read, not rebuilt
    assert np.array_equal(same.masks, bank.masks)
    with pytest.raises(SamBankError, match="other settings"):
        load_or_build_sam_bank(path, scenes=7, seed=0, scene_cfg=None, progress=False)
    (tmp_path / "bad.npz").write_bytes(b"not a bank")
    with pytest.raises(SamBankError, match="bad.npz"):
        load_sam_bank(tmp_path / "bad.npz")


def test_bank_batches_are_captioned_from_their_objects(bank, monkeypatch):
    import pseudo_ris.foundation.sam_bank as sam_bank

    groups = bank.by_scene()
    batch = sam_bank_batch(bank, groups, np.random.default_rng(0), 32, 10, 2, GenericCaptionConfig(), 0.3, 0, None)
    assert batch.images.shape == (10, 3, 32, 32) and len(batch.captions) == 10
    assert bool(compatible(batch.stated, batch.objects).diagonal().all())  # every caption true of its own crop
    again = sam_bank_batch(bank, groups, np.random.default_rng(0), 32, 10, 2, GenericCaptionConfig(), 0.3, 0, None)
    assert torch.equal(batch.images, again.images) and batch.captions == again.captions
    # the crops are cut with the bank's automatic masks, not the objects' exact ones
    cut_with = []
    real_views = sam_bank.object_views
    monkeypatch.setattr(sam_bank, "object_views", lambda image, masks, size: cut_with.append(masks)
                        or real_views(image, masks, size))
    sam_bank_batch(bank, groups, np.random.default_rng(0), 32, 10, 2, GenericCaptionConfig(), 0.3, 0, None)
    used = np.concatenate(cut_with)
    assert len(used) == 10
    assert all(any(np.array_equal(m, b) for b in bank.masks) for m in used)


def test_coca_recipe_draws_its_share_from_the_bank(tmp_path, monkeypatch):
    import pseudo_ris.foundation.coca_training as coca_training
    import pseudo_ris.foundation.sam_bank as sam_bank

    sizes = []
    real = sam_bank.sam_bank_batch
    monkeypatch.setattr(sam_bank, "build_sam_bank", lambda *a, **k: build_sam_bank(3, seed=0, progress=False))
    monkeypatch.setattr(coca_training, "sam_bank_batch", lambda *a, **k: sizes.append(a[4]) or real(*a, **k))
    seen_batches = []
    real_loss = coca_training.coca_step_loss
    monkeypatch.setattr(coca_training, "coca_step_loss",
                        lambda bundle, images, *a: seen_batches.append(len(images)) or real_loss(bundle, images, *a))
    cfg = dict(steps=2, batch_size=8, objects_per_scene=2, warmup_steps=1, checkpoint_every=1, sam_bank_share=0.25,
               sam_bank_scenes=3, init={})
    coca_training.train_coca(cfg, out_dir=tmp_path / "coca", progress=False)
    assert sizes == [2, 2] and seen_batches == [8, 8]  # 25 % of 8 crops from the bank, the batch size unchanged
    assert (tmp_path / "coca" / BANK_NAME).is_file()


def test_bank_share_is_checked():
    with pytest.raises(FoundationConfigError, match="sam_bank_share"):
        make_config(CocaTrainConfig, {"sam_bank_share": 1.0})
    with pytest.raises(FoundationConfigError, match="sam_bank_scenes"):
        make_config(CocaTrainConfig, {"sam_bank_scenes": 0})
