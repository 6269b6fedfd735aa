"""Shared fixtures. Keep tests single-threaded: CI and developer machines have 2 cores."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)


def main_job_generate_overrides() -> list[str]:
    """The overrides of conf/generate.yaml that ``tools/train.py data=pseudo`` generates its labels with."""
    from omegaconf import OmegaConf

    return list(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "train.yaml").pseudo_labels.generate)


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


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a boolean mask, computed by hand (column-major run lengths, starting with 0s)."""
    flat = np.asarray(mask).flatten(order="F").astype(int)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(np.asarray(mask).shape), "counts": counts}


@pytest.fixture
def handmade_refer(tmp_path: Path) -> Path:
    """Data root with a hand-written ``refcoco`` dataset (polygon and RLE segmentations)."""
    return _write_handmade_refer(tmp_path / "data")


# ---------------------------------------------------------------------------------------------- decoding models
CAPTION_WORDS = "a the big small red green blue yellow cube ball cone ring left right of on".split()


def assert_live_coca(bundle, n_images: int = 3) -> None:
    """Decoding tests are only meaningful on a model whose next-token logits are finite and informative: not
    constant over the vocabulary, and different for different images and prefixes. A CoCa whose vocabulary
    projection was left uninitialised (all zeros, or 1e7 garbage) fails here, so every test using it fails."""
    g = torch.Generator().manual_seed(123)
    size = bundle.image_size
    pixels = bundle.preprocess(torch.rand(n_images, 3, size, size, generator=g))
    tok = bundle.tokenizer
    prefixes = torch.tensor([[tok.sot_id], [tok.sot_id]])
    prefixes = torch.cat([prefixes, torch.tensor([[tok.vocab_size - 1], [tok.vocab_size - 2]])], dim=1)
    with torch.no_grad():
        out = [bundle.model(pixels, prefixes[i:i + 1].expand(n_images, -1), output_labels=False)["logits"][:, -1]
               for i in range(2)]
    for z in out:
        assert torch.isfinite(z).all(), "CoCa logits are not finite"
        assert float(z.abs().max()) < 1e3, "CoCa logits are huge (uninitialised projection?)"
        assert float(z.std(dim=-1).min()) > 1e-2, "CoCa logits are constant over the vocabulary"
        assert float((z - z.mean(dim=0)).abs().max()) > 1e-4, "CoCa logits do not depend on the image"
    assert float((out[0] - out[1]).abs().max()) > 1e-4, "CoCa logits do not depend on the prefix"


@pytest.fixture(scope="session")
def tiny_coca():
    """A random-init ``coca_tiny`` (seed 0, a 16-word vocabulary) checked by ``assert_live_coca``."""
    from pseudo_ris.captioning import WordTokenizer, load_coca

    torch.manual_seed(0)
    bundle = load_coca("coca_tiny", tokenizer=WordTokenizer(CAPTION_WORDS, context_length=32))
    assert_live_coca(bundle)
    return bundle


# ---------------------------------------------------------------------------------------------- RIS training data
def make_tiny_ris_data(root: Path, n_train_images: int = 10, n_eval_images: int = 2, height: int = 24,
                       width: int = 32) -> dict:
    """A tiny learnable REFER dataset ``tinyref`` plus a pseudo-label dataset ``tinyref_pseudo`` over its images.

    Each image (grey noise background) holds a red square on the left and a blue square on the right; human refs
    say "the red square on the left" / "blue square" etc.; splits: train (``n_train_images`` images), val and
    testA (``n_eval_images`` each). The pseudo dataset (split_by ``pseudo``, images referenced by absolute path)
    has one ref per train object with 4 captions. Written with the shared writer (``write_refer_dataset``).
    """
    from pseudo_ris.data.masks import mask_to_rle
    from pseudo_ris.data.refer import make_sentence, write_refer_dataset

    rng = np.random.default_rng(0)
    image_dir = root / "images" / "tiny"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, anns, refs, pseudo_refs = [], [], [], []
    splits = ["train"] * n_train_images + ["val"] * n_eval_images + ["testA"] * n_eval_images
    sent_id = 0
    for image_id, split in enumerate(splits):
        pixels = rng.integers(90, 160, (height, width, 3), dtype=np.uint8)
        side = int(rng.integers(5, 9))
        boxes = {"red": (int(rng.integers(1, width // 2 - side)), int(rng.integers(1, height - side))),
                 "blue": (int(rng.integers(width // 2, width - side)), int(rng.integers(1, height - side)))}
        colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
        for colour, (x, y) in boxes.items():
            pixels[y:y + side, x:x + side] = colours[colour]
            mask = np.zeros((height, width), bool)
            mask[y:y + side, x:x + side] = True
            ann_id = len(anns)
            anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": mask_to_rle(mask),
                         "area": float(mask.sum()), "bbox": [x, y, side, side], "iscrowd": 0})
            where = "left" if colour == "red" else "right"
            texts = [f"the {colour} square on the {where}", f"{colour} square"]
            sents = [make_sentence(sent_id + k, t) for k, t in enumerate(texts)]
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "split": split,
                         "sent_ids": [s["sent_id"] for s in sents], "sentences": sents})
            sent_id += len(sents)
            if split == "train":
                caps = [f"a {colour} square", f"the {where} square", f"{colour} shape", f"a square on the {where}"]
                psents = [make_sentence(1000 + sent_id + k, t) for k, t in enumerate(caps)]
                pseudo_refs.append({"ref_id": 5000 + ann_id, "ann_id": ann_id, "image_id": image_id,
                                    "split": "train", "sent_ids": [s["sent_id"] for s in psents],
                                    "sentences": psents})
                sent_id += len(psents)
        name = f"{image_id:04d}.png"
        Image.fromarray(pixels).save(image_dir / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
    categories = [{"id": 1, "name": "square"}]
    write_refer_dataset(root, "tinyref", split_by="unc", images=images, annotations=anns, categories=categories,
                        refs=refs, image_dir="../images/tiny")
    pseudo_root = root / "pseudo"
    train_ids = {r["image_id"] for r in pseudo_refs}
    write_refer_dataset(pseudo_root, "tinyref_pseudo", split_by="pseudo",
                        images=[i for i in images if i["id"] in train_ids],
                        annotations=[a for a in anns if a["image_id"] in train_ids], categories=categories,
                        refs=pseudo_refs, image_dir=str(image_dir.resolve()))
    return {"data_root": root, "dataset": "tinyref", "pseudo_root": pseudo_root, "pseudo_name": "tinyref_pseudo",
            "n_train_images": n_train_images, "n_eval_images": n_eval_images}


@pytest.fixture
def tiny_ris_data(tmp_path: Path) -> dict:
    """See ``make_tiny_ris_data``: human ``tinyref`` + pseudo ``tinyref_pseudo`` on 24x32 images."""
    return make_tiny_ris_data(tmp_path / "ris_data")


# ------------------------------------------------------------------------------------------------ VGPhraseCut
RECT = [[2, 2], [10, 2], [10, 8], [2, 8]]  # PIL with outline: x 2..10, y 2..8 inclusive


def _task(task_id, image_id, phrase, name, polygons_per_instance, boxes):
    return {"task_id": task_id, "image_id": image_id, "ann_ids": [1], "phrase": phrase,
            "phrase_structure": {"name": name, "attributes": [], "relation_ids": [], "relation_descriptions": [],
                                 "type": "name"},
            "instance_boxes": boxes, "Polygons": polygons_per_instance}


def write_phrasecut(root: Path) -> Path:
    """``root/VGPhraseCut_v0`` with 3 test tasks (1 COCO category, 2 not) and 1 val task."""
    pc = root / "VGPhraseCut_v0"
    (pc / "images").mkdir(parents=True)
    info = [{"image_id": 11, "width": 40, "height": 30, "split": "test", "coco_id": None, "flickr_id": None},
            {"image_id": 12, "width": 20, "height": 20, "split": "test", "coco_id": 5, "flickr_id": None},
            {"image_id": 13, "width": 16, "height": 16, "split": "val", "coco_id": None, "flickr_id": None}]
    (pc / "image_data_split.json").write_text(json.dumps(info))
    for i in info:
        Image.fromarray(np.full((i["height"], i["width"], 3), 100, np.uint8)).save(pc / "images" / f"{i['image_id']}.jpg")
    test = [_task("11__1", 11, "black dog", "dog", [[RECT]], [[2, 2, 8, 6]]),
            _task("11__2", 11, "tall trees", "tree", [[[[20, 10], [30, 10], [30, 20]]], [[[32, 2], [38, 2], [38, 6]]]],
                  [[20, 10, 10, 10], [32, 2, 6, 4]]),
            _task("12__3", 12, "white cloud", "cloud", [[[[0, 0], [5, 0], [5, 5], [0, 5]]]], [[0, 0, 5, 5]])]
    val = [_task("13__4", 13, "red car", "car", [[[[1, 1], [6, 1], [6, 6], [1, 6]]]], [[1, 1, 5, 5]])]
    (pc / "refer_test.json").write_text(json.dumps(test))
    (pc / "refer_val.json").write_text(json.dumps(val))
    return root


@pytest.fixture
def phrasecut_root(tmp_path) -> Path:
    """A data root holding a hand-made VGPhraseCut_v0 (see ``write_phrasecut``)."""
    return write_phrasecut(tmp_path / "data")
