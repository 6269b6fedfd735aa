"""Official Pseudo-RIS outputs (masks <img_id>/<j>.png + captions jsonl/csv) imported as our pseudo dataset.

The sample is written by hand in the official layout; expected kept captions are worked out from the official
reader's rules (DoC > 1; none passing -> one random caption; one_mask -> top num_sent // 2 by CLIP score).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudo_ris.data import ReferDataset
from pseudo_ris.generation.official_import import OfficialImportError, import_official


def _box(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


ROWS = [
    {"img_name": "COCO_a.jpg", "img_id": 100, "seg_id": 0, "num_sent": 4,
     "pseudo_caption": ["a cat", "the cat on the left", "cat", "a small grey cat"], "doc": [0.5, 1.2, 1.0, 3.0],
     "one_mask": 0},
    {"img_name": "COCO_a.jpg", "img_id": 100, "seg_id": 1, "num_sent": 3,
     "pseudo_caption": ["a dog", "dog", "the brown dog"], "doc": [0.2, 0.9, 1.0], "one_mask": 0},
    {"img_name": "COCO_b.jpg", "img_id": 200, "seg_id": 0, "num_sent": 5,
     "pseudo_caption": ["e0", "e1", "e2", "e3", "e4"], "doc": [20.0, 25.0, 18.0, 30.0, 22.0], "one_mask": 1},
]
MASK_A = _box(20, 30, 2, 10, 3, 12)
MASK_B = _box(20, 30, 8, 18, 15, 28)
MASK_C = _box(16, 16, 4, 12, 4, 12)


def _official(tmp_path: Path, rows=ROWS, fmt: str = "jsonl") -> dict[str, Path]:
    images, masks = tmp_path / "images", tmp_path / "pseudo_masks"
    images.mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(images / "COCO_a.jpg")
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(images / "COCO_b.jpg")
    for img_id, files in {100: [np.zeros((20, 30), np.uint8), MASK_A, MASK_B], 200: [MASK_C]}.items():
        (masks / str(img_id)).mkdir(parents=True)
        for j, m in enumerate(files):  # 100/0.png is constant: the official code skips it, seg_id 0 = 1.png
            Image.fromarray(m).save(masks / str(img_id) / f"{j}.png")
    if fmt == "jsonl":
        captions = tmp_path / "distinctive_captions.json"
        captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:  # as pandas.to_csv writes the same rows: an index column, list cells as Python literals
        captions = tmp_path / "distinctive_captions.csv"
        with open(captions, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "img_name", "img_id", "seg_id", "num_sent", "pseudo_caption", "doc",
                             "one_mask"])
            for i, r in enumerate(rows):
                writer.writerow([i, r["img_name"], r["img_id"], r["seg_id"], r["num_sent"],
                                 str(r["pseudo_caption"]), str(r["doc"]), r["one_mask"]])
    return {"masks": masks, "captions": captions, "images": images, "out": tmp_path / "out"}


def _texts(ds: ReferDataset) -> dict[tuple[int, int], list[str]]:
    return {(ref["image_id"], ds.anns[ref["ann_id"]]["pseudo"]["seg_id"]): [s["raw"] for s in ref["sentences"]]
            for ref in ds.refs}


def test_import_follows_the_official_reader(tmp_path):
    paths = _official(tmp_path)
    summary = import_official(**paths)
    ds = ReferDataset(paths["out"], "pseudo")
    assert ds.split_by == "pseudo" and ds.splits == ["train"]
    texts = _texts(ds)
    assert texts[(100, 0)] == ["the cat on the left", "a small grey cat"]  # DoC 1.2 and 3.0; 1.0 is not > 1
    assert len(texts[(100, 1)]) == 1 and texts[(100, 1)][0] in ROWS[1]["pseudo_caption"]  # none passes
    assert texts[(200, 0)] == ["e1", "e3"]  # one mask: top 5 // 2 = 2 by CLIP score (30, 25), caption order
    masks = {key: ds.ref_mask(ref) for key, ref in zip(texts, ds.refs)}
    assert np.array_equal(masks[(100, 0)], MASK_A > 0) and np.array_equal(masks[(100, 1)], MASK_B > 0)
    assert np.array_equal(masks[(200, 0)], MASK_C > 0)
    assert ds.load_image(200).shape == (16, 16, 3)
    assert summary["mask_decisions"] == {"pass": 1, "fallback_random": 1, "single_mask": 1}
    # the random fallback is seeded: the same import again gives the same caption
    again = import_official(**{**paths, "out": tmp_path / "again"})
    assert _texts(ReferDataset(tmp_path / "again", "pseudo")) == texts and again == summary
    dropped = import_official(**{**paths, "out": tmp_path / "drop"}, filter_cfg={"fallback": "drop"})
    assert dropped["refs"] == 2


def test_csv_equals_jsonl(tmp_path):
    a = _official(tmp_path / "j")
    b = _official(tmp_path / "c", fmt="csv")
    import_official(**a)
    import_official(**b)
    assert _texts(ReferDataset(a["out"], "pseudo")) == _texts(ReferDataset(b["out"], "pseudo"))


def test_imported_labels_feed_the_training_data_module(tmp_path, tiny_ris_data):
    from ris_models.datamodule import RISDataModule

    paths = _official(tmp_path)
    import_official(**paths)
    dm = RISDataModule(tiny_ris_data["data_root"], tiny_ris_data["dataset"], mode="pseudo",
                       pseudo_root=paths["out"], pseudo_name="pseudo", input_size=32, image_mean=(0.5,) * 3,
                       image_std=(0.5,) * 3)
    train = dm.train_dataset()
    assert len(train) == 3
    item = train[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].sum() > 0 and item["sentence"]


def _assert_nothing_written(paths: dict[str, Path]) -> None:
    out = paths["out"]
    assert not (out / "pseudo").exists()
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


@pytest.mark.parametrize("case, match", [
    ("bad_json", r"distinctive_captions.json line 2: not a JSON object"),
    ("doc_length", r"line 1: 3 DoC values for 4 captions"),
    ("num_sent", r"line 3: num_sent is 4 but there are 5 captions"),
    ("seg_id", r"line 2: seg_id 7 but image 100 has 2 non-constant masks"),
    ("missing_field", r"line 1: missing field\(s\) \['doc'\]"),
    ("mask_size", r"line 3: mask .*200/0.png is 8x8 but image .*COCO_b.jpg is 16x16"),
    ("missing_image", r"line 3: image .*COCO_b.jpg not found"),
    ("duplicate", r"line 3: image 100 mask 0 already given on line 1"),
])
def test_bad_inputs_name_the_line_and_write_nothing(tmp_path, case, match):
    rows = [dict(r) for r in ROWS]
    if case == "doc_length":
        rows[0]["doc"] = rows[0]["doc"][:3]
    elif case == "num_sent":
        rows[2]["num_sent"] = 4
    elif case == "seg_id":
        rows[1]["seg_id"] = 7
    elif case == "missing_field":
        del rows[0]["doc"]
    elif case == "duplicate":
        rows[2] = {**rows[0]}
    paths = _official(tmp_path, rows)
    if case == "bad_json":
        lines = paths["captions"].read_text().splitlines()
        lines[1] = lines[1][:25]
        paths["captions"].write_text("\n".join(lines) + "\n")
    elif case == "mask_size":
        Image.fromarray(_box(8, 8, 1, 5, 1, 5)).save(paths["masks"] / "200" / "0.png")
    elif case == "missing_image":
        (paths["images"] / "COCO_b.jpg").unlink()
    with pytest.raises(OfficialImportError, match=match):
        import_official(**paths)
    _assert_nothing_written(paths)


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    paths = _official(tmp_path)
    import_official(**paths)
    with pytest.raises(OfficialImportError, match="already exists"):
        import_official(**paths)
    import_official(**paths, overwrite=True)
    assert len(ReferDataset(paths["out"], "pseudo").refs) == 3
    assert [p.name for p in paths["out"].iterdir()] == ["pseudo"]


def test_cli_imports_and_reports_errors_in_one_line(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    paths = _official(tmp_path)
    args = [f"{k}={v}" for k, v in paths.items()]
    done = subprocess.run([sys.executable, str(root / "tools" / "import_pseudo.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 masks of 2 images -> 3 refs" in done.stdout and "pseudo_root=" in done.stdout
    bad = subprocess.run([sys.executable, str(root / "tools" / "import_pseudo.py"), *args[:3]],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: option out=... is required (see " \
                                                         "conf/import_pseudo.yaml)"
