"""The REFER reader/writer on a hand-made RefCOCO sample (polygon + RLE) and its bad-input errors."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from conftest import uncompressed_rle
from pseudo_ris.data import (EmptyMaskError, ReferDataError, ReferDataset, UnknownDatasetError, make_sentence,
                             mask_to_rle, rle_to_mask, write_refer_dataset)


def test_reads_handmade_refcoco(handmade_refer):
    ds = ReferDataset(handmade_refer, "refcoco")
    assert ds.split_by == "unc"
    assert ds.splits == ["train", "val", "testA"]
    assert ds.eval_splits == ["val", "testA"]
    assert [s.sentence for s in ds.samples("train")] == ["left square", "the square on the left"]
    image = ds.load_image(1)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8

    poly = ds.ann_mask(10)  # polygon x 2..12, y 3..13
    assert poly.shape == (20, 30)
    ys, xs = np.nonzero(poly)
    assert 2 <= xs.min() <= 3 and 11 <= xs.max() <= 12 and 3 <= ys.min() <= 4 and 12 <= ys.max() <= 13
    rect = ds.ref_mask(ds.refs_by_id[1])  # RLE rectangle rows 5..14, cols 18..27
    expected = np.zeros((20, 30), bool)
    expected[5:15, 18:28] = True
    assert np.array_equal(rect, expected)


def test_rle_round_trip_and_uncompressed():
    mask = np.zeros((7, 9), bool)
    mask[1:4, 2:8] = True
    mask[6, 0] = True
    rle = mask_to_rle(mask)
    json.dumps(rle)  # JSON-safe
    assert np.array_equal(rle_to_mask(rle), mask)
    # uncompressed RLE (column-major run lengths), as iscrowd annotations use
    assert np.array_equal(rle_to_mask(uncompressed_rle(mask)), mask)


def test_writer_round_trip(tmp_path):
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:6] = True
    images = [{"id": 5, "file_name": "a.png", "height": 8, "width": 8}]
    anns = [{"id": 7, "image_id": 5, "category_id": 1, "segmentation": mask_to_rle(mask), "area": 12,
             "bbox": [2, 2, 4, 3], "iscrowd": 0}]
    refs = [{"ref_id": 0, "ann_id": 7, "image_id": 5, "split": "train", "sent_ids": [3, 4],
             "sentences": [make_sentence(3, "The red one!"), make_sentence(4, "red circle")]}]
    write_refer_dataset(tmp_path, "pseudo_x", split_by="pseudo", images=images, annotations=anns,
                        categories=[{"id": 1, "name": "object"}], refs=refs, image_dir="/elsewhere/imgs")
    ds = ReferDataset(tmp_path, "pseudo_x")
    assert ds.split_by == "pseudo"
    assert str(ds.image_path(5)) == "/elsewhere/imgs/a.png"
    assert ds.refs[0]["sentences"][0]["tokens"] == ["the", "red", "one"]
    assert ds.refs[0]["file_name"] == "a.png"
    assert np.array_equal(ds.ref_mask(0), mask)
    assert not list(tmp_path.glob("pseudo_x/*.tmp"))


def test_missing_refs_file_names_it(handmade_refer):
    (handmade_refer / "refcoco" / "refs(unc).p").unlink()
    with pytest.raises(ReferDataError, match=r"refs\(unc\)\.p not found"):
        ReferDataset(handmade_refer, "refcoco")


def test_truncated_refs_file_names_it(handmade_refer):
    path = handmade_refer / "refcoco" / "refs(unc).p"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ReferDataError, match=r"refs\(unc\)\.p is truncated"):
        ReferDataset(handmade_refer, "refcoco")


def test_missing_and_corrupt_image(handmade_refer):
    ds = ReferDataset(handmade_refer, "refcoco")
    (ds.image_path(2)).unlink()
    with pytest.raises(ReferDataError, match="img2.jpg not found"):
        ds.load_image(2)
    ds.image_path(1).write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ReferDataError, match="cannot decode .*img1.jpg"):
        ds.load_image(1)


def test_empty_mask_names_annotation(handmade_refer):
    path = handmade_refer / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    instances["annotations"][2]["segmentation"] = [[0, 0, 0, 0, 0, 0]]  # degenerate polygon
    path.write_text(json.dumps(instances))
    ds = ReferDataset(handmade_refer, "refcoco")
    with pytest.raises(EmptyMaskError, match="ref 2: annotation 12"):
        ds.ref_mask(ds.refs_by_id[2])


def test_unknown_dataset_and_dangling_ref(handmade_refer):
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'refclef'"):
        ReferDataset(handmade_refer, "refclef")
    with pytest.raises(ReferDataError, match="dataset 'refcocog' not found"):
        ReferDataset(handmade_refer, "refcocog")
    path = handmade_refer / "refcoco" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    refs[1]["ann_id"] = 999
    path.write_bytes(pickle.dumps(refs))
    with pytest.raises(ReferDataError, match="ref 1 .* annotation 999"):
        ReferDataset(handmade_refer, "refcoco")


def test_dataset_dir_is_copyable(handmade_refer, tmp_path):
    """A data root can be moved: nothing in it stores absolute paths unless the user asked for one."""
    moved = tmp_path / "moved"
    shutil.copytree(handmade_refer, moved)
    assert ReferDataset(moved, "refcoco").load_image(1).shape == (20, 30, 3)


def test_atomic_write_respects_umask(tmp_path):
    import os

    from pseudo_ris.data.io import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.txt", "hi")
    finally:
        os.umask(old)
    assert path.read_text() == "hi"
    assert (path.stat().st_mode & 0o777) == 0o644
