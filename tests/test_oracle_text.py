"""Oracle-text rewrite of a pseudo dataset, on a hand-built 20 x 20 scene.

GT: A = small red circle (rows/cols 2-6), B = small blue circle (rows 2-6, cols 12-16), C = big red square
(rows 10-17, cols 4-11). Pseudo refs: r1 = A exactly with a wrong caption, r2 = top half of C (IoU 0.5, exactly the
match threshold), r3 = a background blob (matches nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pseudo_ris.data.masks import mask_to_bbox, mask_to_rle
from pseudo_ris.data.refer import ReferDataset, make_sentence, write_refer_dataset
from pseudo_ris.evaluation.oracle_text import write_oracle_text_dataset
from pseudo_ris.evaluation.quality import GroundTruth, QualityError
from pseudo_ris.synthref.oracle import ground_expression

from hand_scene import GT, H, IMAGE_ID, W, box as _box

PSEUDO = {1: (GT[0][0], ["a blue square", "a circle"]), 2: (_box(10, 13, 4, 11), ["a red circle"]),
          3: (_box(18, 19, 14, 19), ["a blue circle"])}
ROOT = Path(__file__).resolve().parents[1]
IMAGE = {"id": IMAGE_ID, "file_name": "x.png", "height": H, "width": W}


@pytest.fixture
def truth(tmp_path: Path) -> GroundTruth:
    anns = [{"id": i + 1, "image_id": IMAGE_ID, "category_id": 1, "segmentation": mask_to_rle(m),
             "area": int(m.sum()), "bbox": mask_to_bbox(m), "iscrowd": 0, "attributes": a}
            for i, (m, a) in enumerate(GT)]
    refs = [{"ref_id": a["id"], "ann_id": a["id"], "image_id": IMAGE_ID, "file_name": "x.png", "split": "train",
             "category_id": 1, "sent_ids": [], "sentences": []} for a in anns]
    write_refer_dataset(tmp_path / "gt", "synthref_pool", split_by="unc", images=[IMAGE], annotations=anns,
                        categories=[{"id": 1, "name": "object"}], refs=refs)
    return GroundTruth.from_root(tmp_path / "gt")


@pytest.fixture
def pseudo_root(tmp_path: Path) -> Path:
    anns, refs, sid = [], [], 0
    for ref_id, (mask, texts) in PSEUDO.items():
        anns.append({"id": ref_id, "image_id": IMAGE_ID, "category_id": 1, "segmentation": mask_to_rle(mask),
                     "area": int(mask.sum()), "bbox": mask_to_bbox(mask), "iscrowd": 0})
        sents = []
        for text in texts:
            sid += 1
            sents.append(make_sentence(sid, text))
        refs.append({"ref_id": ref_id, "ann_id": ref_id, "image_id": IMAGE_ID, "file_name": "x.png",
                     "split": "train", "category_id": 1, "sent_ids": [s["sent_id"] for s in sents],
                     "sentences": sents})
    write_refer_dataset(tmp_path / "p", "pseudo", split_by="pseudo", images=[IMAGE], annotations=anns,
                        categories=[{"id": 1, "name": "object"}], refs=refs, image_dir=str(tmp_path / "images"))
    return tmp_path / "p"


def _objects() -> list[dict]:
    return [{**a, "bbox": mask_to_bbox(m)} for m, a in GT]


def test_matched_masks_get_expressions_of_their_object(pseudo_root, truth, tmp_path):
    summary = write_oracle_text_dataset(pseudo_root, "pseudo", truth, tmp_path / "o")
    assert (summary.refs_in, summary.refs_out, summary.dropped_unmatched) == (3, 2, 1)
    out = ReferDataset(tmp_path / "o", "pseudo")
    assert sorted(r["ref_id"] for r in out.refs) == [1, 2]          # the background blob is gone
    target = {1: 0, 2: 2}                                          # r1 -> A, r2 -> C (IoU exactly 0.5)
    for ref in out.refs:
        texts = [s["sent"] for s in ref["sentences"]]
        assert texts and not set(texts) & set(PSEUDO[ref["ref_id"]][1])   # the captions were replaced
        for text in texts:  # the oracle grounds every new sentence to exactly the matched object
            assert ground_expression(text, _objects(), H) == [target[ref["ref_id"]]], text
        # the masks are the pseudo masks, untouched
        assert np.array_equal(out.ref_mask(ref), PSEUDO[ref["ref_id"]][0])
    assert summary.sentences == sum(len(r["sentences"]) for r in out.refs)
    info = json.loads((tmp_path / "o" / "pseudo" / "dataset_info.json").read_text())
    assert info["oracle_text"]["refs_out"] == 2 and info["image_dir"] == str(tmp_path / "images")
    # the source is only read
    assert [s["sent"] for s in ReferDataset(pseudo_root, "pseudo").refs[0]["sentences"]] == PSEUDO[1][1]


def test_match_threshold_and_refusals(pseudo_root, truth, tmp_path):
    strict = write_oracle_text_dataset(pseudo_root, "pseudo", truth, tmp_path / "s", match_iou=0.6)
    assert (strict.refs_out, strict.dropped_unmatched) == (1, 2)   # r2's IoU 0.5 no longer matches
    with pytest.raises(QualityError, match="overwrite its source"):
        write_oracle_text_dataset(pseudo_root, "pseudo", truth, pseudo_root)
    with pytest.raises(QualityError, match="unknown expression style"):
        write_oracle_text_dataset(pseudo_root, "pseudo", truth, tmp_path / "x", style="coco")
    # a dataset whose only mask is the background blob: nothing to write
    src = ReferDataset(pseudo_root, "pseudo")
    write_refer_dataset(tmp_path / "blob", "pseudo", split_by="pseudo", images=[IMAGE], annotations=[src.anns[3]],
                        categories=[{"id": 1, "name": "object"}], refs=[src.refs_by_id[3]])
    with pytest.raises(QualityError, match="no ref's mask matches"):
        write_oracle_text_dataset(tmp_path / "blob", "pseudo", truth, tmp_path / "z")


def test_same_seed_same_sentences(pseudo_root, truth, tmp_path):
    def texts(out: str, seed: int) -> list[list[str]]:
        write_oracle_text_dataset(pseudo_root, "pseudo", truth, tmp_path / out, seed=seed)
        return [[s["sent"] for s in r["sentences"]] for r in ReferDataset(tmp_path / out, "pseudo").refs]

    assert texts("a", 0) == texts("b", 0)


def test_cli_refuses_a_missing_dataset_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "oracle_text.py"),
                           f"pseudo_dataset={tmp_path / 'nope'}", f"out_root={tmp_path / 'o'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: pseudo_dataset={tmp_path / 'nope'}: no such dataset "
                                                "directory"]
