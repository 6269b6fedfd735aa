"""Pseudo-label quality against hand-built ground truth, and the zero-shot baseline with a stub scorer.

The scene (20 x 20): A = small red circle (rows/cols 2-6), B = small blue circle (rows 2-6, cols 12-16),
C = big red square (rows 10-17, cols 4-11). Pseudo masks: m0 = A exactly (IoU 1), m1 = B plus a 5-pixel column
(IoU 25/30), m2 = top half of C (IoU 32/64 = 0.5, exactly the match threshold), m3 = a background blob (IoU 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pseudo_ris.data.masks import mask_to_bbox, mask_to_rle
from pseudo_ris.data.refer import ReferDataset, make_sentence, write_refer_dataset
from pseudo_ris.evaluation.quality import GroundTruth, dataset_quality, format_quality, store_quality
from pseudo_ris.generation.store import CandidateStore

from hand_scene import GT, H, IMAGE_ID, W, box as _box

M1 = _box(2, 6, 12, 16) | _box(2, 6, 17, 17)
PSEUDO = [GT[0][0], M1, _box(10, 13, 4, 11), _box(18, 19, 14, 19)]


@pytest.fixture
def pool_root(tmp_path: Path) -> Path:
    anns = [{"id": i + 1, "image_id": IMAGE_ID, "category_id": 1, "segmentation": mask_to_rle(m), "area": int(m.sum()),
             "bbox": mask_to_bbox(m), "iscrowd": 0, "attributes": attrs} for i, (m, attrs) in enumerate(GT)]
    refs = [{"ref_id": a["id"], "ann_id": a["id"], "image_id": IMAGE_ID, "file_name": "x.png", "split": "train",
             "category_id": 1, "sent_ids": [], "sentences": []} for a in anns]
    write_refer_dataset(tmp_path, "synthref_pool", split_by="unc",
                        images=[{"id": IMAGE_ID, "file_name": "x.png", "height": H, "width": W}],
                        annotations=anns, categories=[{"id": 1, "name": "object"}], refs=refs)
    return tmp_path


def _cand(mask_index: int, k: int, text: str, setting: str, distinctive: bool, doc: float) -> dict:
    # M = 1 everywhere and C = 1 except C[m] = doc, so DoC (logit transform) = doc exactly
    c_all = [1.0] * len(PSEUDO)
    c_all[mask_index] = doc
    return {"image_id": IMAGE_ID, "file_name": "x.png", "mask_index": mask_index, "cand_index": k, "view": 0,
            "view_name": "masked", "setting": setting, "distinctive": distinctive, "text": text, "noun": text,
            "M": 1.0, "C": doc, "M_all": [1.0] * len(PSEUDO), "C_all": c_all, "doc": doc, "uniqueness": doc,
            "correctness": 1.0, "score_transform": "logit"}


CANDIDATES = [  # (mask, text, setting, distinctive, DoC)        oracle on the matched GT object
    (0, "a circle", "beam", False, 0.5),                            # A and B: not referential
    (0, "a red circle", "topk5", True, 2.0),                        # A only
    (0, "a red circle", "topp0.5", True, 2.5),                      # duplicate text: counted once
    (0, "a red shape", "topk5", False, 1.5),                        # plain sample; A and C
    (1, "a circle", "beam", False, 0.5),
    (1, "a blue circle", "topk5", True, 2.0),                       # B only (mask IoU 0.83)
    (2, "a square", "beam", False, 1.5),                            # C only, mask IoU exactly 0.5 -> matched
    (2, "a big red square", "topp0.5", True, 3.0),
    (3, "a circle", "beam", False, 0.5),                            # unmatched mask: never referential
    (3, "a blue circle", "topk5", True, 0.8),                       # names B, but the mask is background
]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    out = tmp_path / "store"
    store = CandidateStore(out)
    image_row = {"key": str(IMAGE_ID), "image_id": IMAGE_ID, "file_name": "x.png", "height": H, "width": W,
                 "status": "ok", "masks": [{"index": i, "rle": mask_to_rle(m), "bbox": mask_to_bbox(m),
                                            "area": int(m.sum()), "score": 1.0, "source": "sam", "category_id": None}
                                           for i, m in enumerate(PSEUDO)]}
    store.add_image(image_row, [_cand(m, k, t, s, d, doc) for k, (m, t, s, d, doc) in enumerate(CANDIDATES)])
    # a second image with no masks: its GT objects are missed (recall), it adds no mask
    store.add_image({"key": "7", "image_id": 7, "file_name": "y.png", "height": H, "width": W,
                     "status": "no_masks", "masks": []}, [])
    return out


@pytest.fixture
def truth(pool_root: Path) -> GroundTruth:
    gt = GroundTruth.from_root(pool_root)
    # image 7 (no masks) has a single GT object of its own
    gt.dataset.images[7] = {"id": 7, "file_name": "y.png", "height": H, "width": W}
    gt.dataset.anns[99] = {"id": 99, "image_id": 7, "segmentation": mask_to_rle(GT[0][0]), "bbox": [2, 2, 5, 5],
                           "attributes": GT[0][1]}
    gt.dataset.__dict__.pop("anns_by_image", None)
    return gt


def test_mask_quality_hand_computed(store_dir, truth):
    report = store_quality(store_dir, truth, policy={"fallback": "drop"})
    m = report["masks"]
    assert m["images"] == 2 and m["masks"] == 4 and m["gt_objects"] == 4
    assert m["mean_iou"] == pytest.approx((1 + 25 / 30 + 0.5 + 0) / 4)
    assert m["iou>=0.5"] == pytest.approx(3 / 4) and m["iou>=0.75"] == pytest.approx(2 / 4)
    assert m["recall@0.5"] == pytest.approx(3 / 4)   # A, B, C found; image 7's object missed
    assert m["recall@0.75"] == pytest.approx(2 / 4)


def test_referential_accuracy_per_variant(store_dir, truth):
    v = store_quality(store_dir, truth, policy={"fallback": "drop"})["variants"]
    assert set(v) == {"beam", "plain", "distinctive", "beam_distinctive", "plain_filtered", "full"}
    assert (v["beam"]["expressions"], v["beam"]["referential"]) == (4, pytest.approx(1 / 4))
    assert v["distinctive"]["expressions"] == 4  # the duplicate "a red circle" is counted once
    assert v["distinctive"]["referential"] == pytest.approx(3 / 4)
    assert v["distinctive"]["referential_matched"] == pytest.approx(1.0)  # only the unmatched mask fails
    # every stored row counts there, the duplicate included: 4 of 5 distinctive rows are referential
    assert (v["distinctive"]["candidates"], v["distinctive"]["referential_raw"]) == (5, pytest.approx(4 / 5))
    assert v["plain"]["referential"] == 0.0
    bd = v["beam_distinctive"]
    assert bd["expressions"] == 8 and bd["referential"] == pytest.approx(4 / 8)
    assert bd["referential_per_mask"] == pytest.approx((0.5 + 0.5 + 1 + 0) / 4)
    assert bd["masks_with_referential"] == pytest.approx(3 / 4)
    # DoC > 1 keeps: m0 "a red circle", m1 "a blue circle", m2 both; m3 has none and is dropped (fallback=drop)
    full = v["full"]
    assert (full["masks"], full["expressions"], full["referential"]) == (3, 4, pytest.approx(1.0))
    assert full["mean_iou"] == pytest.approx((1 + 25 / 30 + 0.5) / 3)
    # beam + plain filtered: m0 "a red shape" (not referential), m2 "a square" (referential)
    assert (v["plain_filtered"]["masks"], v["plain_filtered"]["referential"]) == (2, pytest.approx(0.5))
    table = format_quality(store_quality(store_dir, truth, policy={"fallback": "drop"}))
    assert "full method" in table and "100.0" in table


def test_quality_by_shape_family(store_dir, truth):
    """A, B and image 7's object are circles (curved), C a square (angular): 3 curved and 1 angular GT object."""
    v = store_quality(store_dir, truth, policy={"fallback": "drop"})["variants"]
    fam = v["beam_distinctive"]["by_family"]
    # m0 (A) and m1 (B) carry 4 texts, 2 referential; both objects get a referential one, image 7's gets none
    assert fam["curved"] == {"masks": 2, "expressions": 4, "referential": pytest.approx(0.5), "gt_objects": 3,
                             "objects_referred": pytest.approx(2 / 3)}
    assert fam["angular"] == {"masks": 1, "expressions": 2, "referential": pytest.approx(1.0), "gt_objects": 1,
                              "objects_referred": pytest.approx(1.0)}
    # beam only: "a circle" never singles out A or B; "a square" does single out C; m3 matches no object
    assert v["beam"]["by_family"]["curved"]["referential"] == 0.0
    assert v["beam"]["by_family"]["curved"]["objects_referred"] == 0.0
    assert v["beam"]["by_family"]["angular"]["objects_referred"] == pytest.approx(1.0)
    # a stricter match threshold unmatches m2 (IoU 0.5): the square is no longer referred to
    strict = store_quality(store_dir, truth, variants=["beam_distinctive"], match_iou=0.6)["variants"]
    assert strict["beam_distinctive"]["by_family"]["angular"]["objects_referred"] == 0.0
    table = format_quality(store_quality(store_dir, truth, policy={"fallback": "drop"}))
    assert "| 50.0 / 100.0 | 66.7 / 100.0 |" in table  # beam + distinctive, curved / angular


def test_recorded_policy_and_match_threshold(store_dir, truth):
    # the generator's summary.json policy is used: fallback random keeps one candidate of m3 (never referential)
    (store_dir / "summary.json").write_text(json.dumps({"policy": {"fallback": "random", "score_transform": "logit"}}))
    full = store_quality(store_dir, truth, variants=["full"])["variants"]["full"]
    assert full["masks"] == 4 and full["referential"] == pytest.approx(4 / 5)
    # a stricter match threshold makes m2 (IoU 0.5) unmatched: its two referential texts no longer count
    strict = store_quality(store_dir, truth, variants=["beam_distinctive"], match_iou=0.6)["variants"]
    assert strict["beam_distinctive"]["referential"] == pytest.approx(2 / 8)


def test_written_dataset_quality(tmp_path, truth):
    anns = [{"id": 1, "image_id": IMAGE_ID, "category_id": 1, "segmentation": mask_to_rle(PSEUDO[0]),
             "area": 25, "bbox": mask_to_bbox(PSEUDO[0]), "iscrowd": 0},
            {"id": 2, "image_id": IMAGE_ID, "category_id": 1, "segmentation": mask_to_rle(PSEUDO[3]),
             "area": 12, "bbox": mask_to_bbox(PSEUDO[3]), "iscrowd": 0}]
    texts = {1: ["a red circle", "a circle"], 2: ["a blue circle"]}
    refs, sid = [], 0
    for ann in anns:
        sents = []
        for t in texts[ann["id"]]:
            sid += 1
            sents.append(make_sentence(sid, t))
        refs.append({"ref_id": ann["id"], "ann_id": ann["id"], "image_id": IMAGE_ID, "file_name": "x.png",
                     "split": "train", "category_id": 1, "sent_ids": [s["sent_id"] for s in sents],
                     "sentences": sents})
    write_refer_dataset(tmp_path / "p", "pseudo", split_by="pseudo", annotations=anns, refs=refs,
                        images=[{"id": IMAGE_ID, "file_name": "x.png", "height": H, "width": W}],
                        categories=[{"id": 1, "name": "object"}])
    q = dataset_quality(tmp_path / "p", "pseudo", truth)
    assert (q["refs"], q["expressions"]) == (2, 3)
    assert q["referential"] == pytest.approx(1 / 3) and q["referential_matched"] == pytest.approx(1 / 2)
    assert q["mean_iou"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ zero-shot
class StubScorer:
    """Features = the crop's mean colour; a sentence's feature = the colour it names. Prefers the named colour."""

    image_size = 16
    COLOURS = {"red": [1.0, 0.0, 0.0], "blue": [0.0, 0.0, 1.0]}

    def __init__(self, invert: bool = False) -> None:
        self.invert = invert

    def image_features(self, views: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(views.mean((2, 3)), dim=-1)

    def text_features(self, texts):
        return torch.tensor([self.COLOURS[next(w for w in t.split() if w in self.COLOURS)] for t in texts])

    def logits(self, image_features, text_features):
        out = image_features @ text_features.T
        return -out if self.invert else out


@pytest.fixture
def two_squares(tmp_path: Path) -> ReferDataset:
    from PIL import Image

    img = np.full((H, W, 3), 128, np.uint8)
    red, blue = _box(3, 9, 2, 8), _box(10, 16, 11, 17)
    img[red], img[blue] = (230, 20, 20), (20, 20, 230)
    (tmp_path / "images").mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": mask_to_rle(m), "area": int(m.sum()),
             "bbox": mask_to_bbox(m), "iscrowd": 0} for i, m in enumerate((red, blue))]
    refs = [{"ref_id": 1, "ann_id": 1, "image_id": 1, "file_name": "a.png", "split": "val", "category_id": 1,
             "sent_ids": [1], "sentences": [make_sentence(1, "the red one")]},
            {"ref_id": 2, "ann_id": 2, "image_id": 1, "file_name": "a.png", "split": "val", "category_id": 1,
             "sent_ids": [2, 3], "sentences": [make_sentence(2, "blue square"), make_sentence(3, "a blue thing")]}]
    write_refer_dataset(tmp_path, "toy", split_by="unc", images=[{"id": 1, "file_name": "a.png", "height": H,
                                                                   "width": W}],
                        annotations=anns, categories=[{"id": 1, "name": "square"}], refs=refs, image_dir="../images")
    return ReferDataset(tmp_path, "toy")


def test_zero_shot_picks_the_preferred_mask(two_squares):
    from pseudo_ris.masks.source import GtMaskSource
    from ris_models.zero_shot import ZeroShotRIS, evaluate_zero_shot

    good = evaluate_zero_shot(ZeroShotRIS(GtMaskSource(two_squares), StubScorer()), two_squares, progress=False)
    assert good["val"]["n"] == 3 and good["val"]["mIoU"] == pytest.approx(1.0) and good["val"]["oIoU"] == 1.0
    bad = evaluate_zero_shot(ZeroShotRIS(GtMaskSource(two_squares), StubScorer(invert=True)), two_squares,
                             progress=False)
    assert bad["val"]["mIoU"] == pytest.approx(0.0)  # the stub preferring the other square picks it every time


def test_zero_shot_without_masks_predicts_empty(two_squares):
    from ris_models.zero_shot import ZeroShotRIS, evaluate_zero_shot

    res = evaluate_zero_shot(ZeroShotRIS(lambda image, image_id=None: [], StubScorer()), two_squares,
                             progress=False)
    assert res["val"]["mIoU"] == 0.0 and res["val"]["P@0.5"] == 0.0
