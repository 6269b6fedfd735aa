"""Shared fixtures. Keep tests single-threaded: CI and developer machines have 2 cores."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)


def _write_handmade_refer(root: Path) -> Path:
    """A tiny RefCOCO-like dataset written by hand in the raw REFER layout (not through our writer).

    Image 1 (20x30): a polygon square (x 2..11, y 3..12) and an RLE rectangle; image 2 (16x16): one polygon
    triangle. Refs in train/val/testA with 1-2 sentences each, one ref per annotation.
    """
    from pycocotools import mask as mask_utils

    images_dir = root / "images" / "mscoco" / "images" / "train2014"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(images_dir / "img1.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images_dir / "img2.jpg")

    rect = np.zeros((20, 30), dtype=np.uint8)
    rect[5:15, 18:28] = 1
    rle = mask_utils.encode(np.asfortranarray(rect))
    rle["counts"] = rle["counts"].decode("ascii")
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0, "bbox": [2, 3, 10, 10],
         "segmentation": [[2, 3, 12, 3, 12, 13, 2, 13]]},
        {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 100.0, "bbox": [18, 5, 10, 10],
         "segmentation": rle},
        {"id": 12, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 50.0, "bbox": [0, 0, 10, 10],
         "segmentation": [[0, 0, 10, 0, 0, 10]]},
    ]
    instances = {
        "images": [{"id": 1, "file_name": "img1.jpg", "height": 20, "width": 30},
                   {"id": 2, "file_name": "img2.jpg", "height": 16, "width": 16}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "rectangle"}],
    }
    def sent(sid: int, text: str) -> dict:
        return {"sent_id": sid, "sent": text, "raw": text.capitalize() + ".", "tokens": text.split()}
    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "file_name": "img1_0.jpg", "split": "train", "category_id": 1,
         "sent_ids": [0, 1], "sentences": [sent(0, "left square"), sent(1, "the square on the left")]},
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "file_name": "img1_1.jpg", "split": "val", "category_id": 2,
         "sent_ids": [2], "sentences": [sent(2, "right rectangle")]},
        {"ref_id": 2, "ann_id": 12, "image_id": 2, "file_name": "img2_2.jpg", "split": "testA", "category_id": 1,
         "sent_ids": [3, 4], "sentences": [sent(3, "triangle"), sent(4, "the only thing")]},
    ]
    ds_dir = root / "refcoco"
    ds_dir.mkdir(parents=True)
    import json
    (ds_dir / "instances.json").write_text(json.dumps(instances))
    with open(ds_dir / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    return root


@pytest.fixture
def handmade_refer(tmp_path: Path) -> Path:
    """Data root with a hand-written ``refcoco`` dataset (polygon and RLE segmentations)."""
    return _write_handmade_refer(tmp_path / "data")
