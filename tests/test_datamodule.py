"""RISDataModule: human / pseudo / mixed modes, exact seeded ratio sampling, eval items, flips, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pseudo_ris.data.refer import ReferDataset
from ris_models.datamodule import DataConfigError, RISDataModule, sample_images_by_ratio
from ris_models.resumable import DrawKey
from ris_models.transforms import resize_mask, resize_meta, swap_left_right, warp_back

SIZE = 16
NORM = dict(image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))


def _dm(data: dict, **kwargs) -> RISDataModule:
    args = dict(data_root=data["data_root"], dataset=data["dataset"], input_size=SIZE, pseudo_root=data["pseudo_root"],
                pseudo_name=data["pseudo_name"], batch_size=4, **NORM)
    args.update(kwargs)
    return RISDataModule(**args)


def _images(dm: RISDataModule, source: int = 0) -> set[int]:
    ds = dm.human_dataset if source == 0 else dm.pseudo_dataset
    return {int(ds.refs_by_id[i.ref_id]["image_id"]) for i in dm.train_refs() if i.source == source}


def test_human_mode_items_and_eval_splits(tiny_ris_data):
    dm = _dm(tiny_ris_data, mode="human")
    n = tiny_ris_data["n_train_images"]
    items = dm.train_refs()
    assert len(items) == 2 * n and all(i.source == 0 for i in items)  # 2 refs per image, one item per ref
    assert dm.eval_splits == ["val", "testA"] and dm.val_splits == ["val"]
    dm.setup("fit")
    item = dm.train_dataset()[0]
    ref = dm.human_dataset.refs_by_id[item["ref_id"]]
    assert item["image"].shape == (3, SIZE, SIZE) and item["mask"].shape == (SIZE, SIZE)
    assert item["mask"].dtype == torch.bool and item["mask"].any()
    assert item["sentence"] in [s["sent"] for s in ref["sentences"]]
    # evaluation scores every sentence of every ref: 2 refs x 2 sentences per image
    val = dm.eval_dataset("val")
    assert len(val) == 4 * tiny_ris_data["n_eval_images"]
    sample = val[0]
    assert torch.equal(sample["orig_mask"], torch.from_numpy(dm.human_dataset.ann_mask(val.samples[0].ann_id)))
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and len(batch["orig_mask"]) == 4
    assert batch["orig_mask"][0].shape == (24, 32)


def test_mixed_ratio_is_exact_seeded_and_by_image(tiny_ris_data):
    n = tiny_ris_data["n_train_images"]
    n_pseudo = len(ReferDataset(tiny_ris_data["pseudo_root"], tiny_ris_data["pseudo_name"]).refs)
    dm = _dm(tiny_ris_data, mode="mixed", ratio=0.3, subset_seed=1)
    chosen = _images(dm)
    assert len(chosen) == 3  # round(0.3 * 10)
    human = [i for i in dm.train_refs() if i.source == 0]
    assert len(human) == 2 * 3  # every ref of a chosen image is kept
    assert len([i for i in dm.train_refs() if i.source == 1]) == n_pseudo
    assert _images(_dm(tiny_ris_data, mode="mixed", ratio=0.3, subset_seed=1)) == chosen  # same seed, same subset
    others = {frozenset(_images(_dm(tiny_ris_data, mode="mixed", ratio=0.3, subset_seed=s))) for s in range(2, 8)}
    assert len(others | {frozenset(chosen)}) > 1  # the seed matters
    # a larger ratio with the same seed extends the smaller one
    assert chosen <= _images(_dm(tiny_ris_data, mode="mixed", ratio=0.7, subset_seed=1))
    assert len(_images(_dm(tiny_ris_data, mode="human", ratio=0.25, subset_seed=1))) == 3  # 2.5 rounds half up
    assert n == 10


def test_ratio_edges(tiny_ris_data):
    n = tiny_ris_data["n_train_images"]
    zero = _dm(tiny_ris_data, mode="mixed", ratio=0.0).train_refs()
    assert zero and all(i.source == 1 for i in zero)  # pseudo only
    one = _dm(tiny_ris_data, mode="mixed", ratio=1.0).train_refs()
    assert len([i for i in one if i.source == 0]) == 2 * n
    with pytest.raises(DataConfigError, match=r"ratio must be in \[0, 1\]"):
        _dm(tiny_ris_data, mode="mixed", ratio=1.5)
    with pytest.raises(DataConfigError, match="ratio"):
        _dm(tiny_ris_data, mode="human", ratio=-0.1)
    with pytest.raises(DataConfigError, match="no training refs"):
        _dm(tiny_ris_data, mode="human", ratio=0.0).train_dataset()


def test_sample_images_by_ratio_counts():
    refs = [{"ref_id": i, "image_id": i // 3} for i in range(30)]  # 10 images, 3 refs each
    for ratio in (0.0, 0.1, 0.45, 0.5, 1.0):
        kept = sample_images_by_ratio(refs, ratio, seed=0)
        assert len({r["image_id"] for r in kept}) == int(np.floor(ratio * 10 + 0.5))
        assert len(kept) == 3 * len({r["image_id"] for r in kept})


def test_pseudo_caption_varies_across_draws(tiny_ris_data):
    dm = _dm(tiny_ris_data, mode="pseudo")
    items = dm.train_refs()
    assert items and all(i.source == 1 for i in items)
    dataset = dm.train_dataset()
    ref = dm.pseudo_dataset.refs_by_id[items[0].ref_id]
    captions = {s["sent"] for s in ref["sentences"]}
    before = torch.get_rng_state()
    drawn = [dataset[DrawKey(epoch, 0)]["sentence"] for epoch in range(40)]
    assert set(drawn) <= captions and len(set(drawn)) >= 3  # 4 captions, one draw in each of 40 epochs
    # a draw is a function of (seed, epoch, index): repeatable, and the global generator is not used
    assert [dataset[DrawKey(epoch, 0)]["sentence"] for epoch in range(40)] == drawn
    assert torch.equal(torch.get_rng_state(), before)


def test_missing_pseudo_dataset_says_how_to_generate(tiny_ris_data, tmp_path):
    with pytest.raises(DataConfigError, match="tools/generate.py"):
        _dm(tiny_ris_data, mode="pseudo", pseudo_root=tmp_path / "nowhere")
    with pytest.raises(DataConfigError, match="pseudo_root is not set"):
        _dm(tiny_ris_data, mode="mixed", pseudo_root=None, ratio=0.5)
    with pytest.raises(DataConfigError, match="unknown data mode"):
        _dm(tiny_ris_data, mode="both")
    _dm(tiny_ris_data, mode="human", pseudo_root=None)  # human mode does not need pseudo labels


def test_letterbox_round_trip():
    mask = np.zeros((24, 32), bool)
    mask[4:14, 3:11] = True
    meta = resize_meta(24, 32, 64, "letterbox")
    assert (meta.height, meta.width, meta.top, meta.left) == (48, 64, 8, 0)
    small = resize_mask(mask, meta, 64)
    assert not small[:8].any() and not small[56:].any()  # padding is background
    back = warp_back(small.float(), meta) > 0.5
    assert back.shape == (24, 32)
    inter = (back & torch.from_numpy(mask)).sum().item()
    union = (back | torch.from_numpy(mask)).sum().item()
    assert inter / union > 0.9
    stretch = resize_meta(24, 32, 64, "stretch")
    assert (stretch.height, stretch.width) == (64, 64)


def test_swap_left_right_words():
    assert swap_left_right("the man on the left") == "the man on the right"
    assert swap_left_right("Left guy, right-most cup, leftmost chair") == "Right guy, left-most cup, rightmost chair"
    assert swap_left_right("a bright copyright sign") == "a bright copyright sign"
    assert swap_left_right("leftover cake to the right") == "leftover cake to the left"


def test_hflip_swaps_words_with_pixels(tiny_ris_data):
    dm = _dm(tiny_ris_data, mode="human", hflip_prob=1.0, resize_mode="stretch")
    dataset = dm.train_dataset()
    # the red square is on the left half of every image; flipped, it must be on the right and say "right"
    red = [k for k, i in enumerate(dataset.items) if "red" in dm.human_dataset.refs_by_id[i.ref_id]["sentences"][0]["sent"]]
    for k in red[:3]:
        for _ in range(4):
            item = dataset[k]
            cols = item["mask"].nonzero()[:, 1].float()
            assert cols.mean() > SIZE / 2
            assert "left" not in item["sentence"]
    assert _dm(tiny_ris_data, mode="human").hflip_prob == 0.0  # off by default


def test_eval_geometry_follows_the_protocol(tiny_ris_data):
    """LAVT's protocol stretches and resizes targets with NEAREST; CRIS's letterboxes by an affine warp."""
    from ris_models.eval_transforms import resize_mask_nearest

    lavt = _dm(tiny_ris_data, mode="human", input_size=48, eval_resize_mode="stretch", target_resize="nearest")
    sample = lavt.eval_dataset("val")[0]
    assert sample["meta"] == {"orig_h": 24, "orig_w": 32, "top": 0, "left": 0, "height": 48, "width": 48}
    orig, meta = sample["orig_mask"].numpy(), resize_meta(24, 32, 48, "stretch")
    assert torch.equal(sample["mask"], resize_mask_nearest(orig, meta, 48))
    assert not torch.equal(sample["mask"], resize_mask(orig, meta, 48))  # here NEAREST and bilinear differ
    project = _dm(tiny_ris_data, mode="human", input_size=48).eval_dataset("val")[0]
    assert project["meta"]["top"] == 6 and project["meta"]["height"] == 36  # letterbox as in training
    cris = _dm(tiny_ris_data, mode="human", input_size=48, eval_resize_mode="letterbox_affine").eval_dataset("val")[0]
    # 24x32 into 48: s = 1.5, 6 rows of offset; rows 0 and 47 are beyond the cubic's reach: the mean colour (~0)
    assert cris["image"][:, 0].abs().max() < 0.02 and cris["image"][:, 47].abs().max() < 0.02
    assert cris["image"][:, 6:42].abs().max() > 0.5
    with pytest.raises(DataConfigError, match="target_resize"):
        _dm(tiny_ris_data, mode="human", target_resize="bicubic")


def test_a_lone_last_training_sample_is_dropped_so_batchnorm_can_train():
    """17 refs at batch 16 left a final batch of one, which stops BatchNorm models (the tiny CRIS) mid-epoch."""
    import torch

    from ris_models.datamodule import lone_last_batch
    from ris_models.resumable import ResumableDataLoader, ResumableSampler

    assert lone_last_batch(17, 16) and lone_last_batch(33, 16)
    assert not lone_last_batch(16, 16) and not lone_last_batch(18, 16) and not lone_last_batch(5, 1)
    data = torch.arange(17, dtype=torch.float32)[:, None].repeat(1, 4)
    sampler = ResumableSampler(len(data), 16, seed=0)
    class ByDrawKey(torch.utils.data.Dataset):  # the project's datasets are indexed by the sampler's DrawKeys
        def __len__(self):
            return len(data)

        def __getitem__(self, key):
            return data[key.index]

    loader = ResumableDataLoader(ByDrawKey(), batch_size=16, sampler=sampler,
                                 drop_last=lone_last_batch(len(sampler), 16))
    norm = torch.nn.BatchNorm1d(4).train()
    sizes = [len(norm(batch)) for batch in loader]
    assert sizes == [16]
