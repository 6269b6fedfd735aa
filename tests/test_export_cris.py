"""Export to the anns/<dataset>/<split>.json + masks/<dataset>/<ref_id>.png layout of CRIS's data_process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudo_ris.data import ReferDataset
from pseudo_ris.data.export_cris import ExportError, export_cris


def test_handmade_refcoco_exports_as_data_process_would(handmade_refer, tmp_path):
    ds = ReferDataset(handmade_refer, "refcoco")
    counts = export_cris(ds, tmp_path / "out")
    assert counts == {"train": 1, "val": 1, "testA": 1}
    val = json.loads((tmp_path / "out" / "anns" / "refcoco" / "val.json").read_text())
    # ref 1: annotation 11, bbox [18, 5, 10, 10] -> [x0, y0, x0 + w, y0 + h]; category 2 is the 2nd id -> cat 1
    assert val == [{"bbox": [18, 5, 28, 15], "cat": 1, "segment_id": 1, "img_name": "img1.jpg",
                    "sentences": [{"idx": 0, "sent_id": 2, "sent": "right rectangle"}], "sentences_num": 1}]
    train = json.loads((tmp_path / "out" / "anns" / "refcoco" / "train.json").read_text())
    assert [s["sent"] for s in train[0]["sentences"]] == ["left square", "the square on the left"]
    png = np.asarray(Image.open(tmp_path / "out" / "masks" / "refcoco" / "1.png"))
    expected = np.zeros((20, 30), np.uint8)
    expected[5:15, 18:28] = 255  # the hand-made RLE rectangle
    assert png.dtype == np.uint8 and np.array_equal(png, expected)
    assert sorted(p.name for p in (tmp_path / "out" / "masks" / "refcoco").iterdir()) == ["0.png", "1.png", "2.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["anns", "masks"]  # no temp dirs left


def test_existing_export_is_kept_unless_overwrite(handmade_refer, tmp_path):
    ds = ReferDataset(handmade_refer, "refcoco")
    export_cris(ds, tmp_path, splits=["val"])
    with pytest.raises(ExportError, match="already exist"):
        export_cris(ds, tmp_path)
    export_cris(ds, tmp_path, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "anns" / "refcoco").iterdir()) == ["testA.json", "train.json",
                                                                                 "val.json"]
    with pytest.raises(ExportError, match=r"split\(s\) \['test'\] not in"):
        export_cris(ds, tmp_path / "x", splits=["test"])


def test_empty_mask_fails_without_writing(handmade_refer, tmp_path):
    path = handmade_refer / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    instances["annotations"][2]["segmentation"] = [[0, 0, 0, 0, 0, 0]]
    path.write_text(json.dumps(instances))
    with pytest.raises(ExportError, match="cannot export ref 2: .*annotation 12 .*empty mask"):
        export_cris(ReferDataset(handmade_refer, "refcoco"), tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_cli_exports_pseudo_labels(tiny_ris_data, tmp_path):
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "tools" / "export_refer.py"), f"data_root={tiny_ris_data['pseudo_root']}",
           f"dataset={tiny_ris_data['pseudo_name']}", f"out={tmp_path / 'cris'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "folder2lmdb.py -j" in done.stdout
    train = json.loads((tmp_path / "cris" / "anns" / "tinyref_pseudo" / "train.json").read_text())
    assert len(train) == 2 * tiny_ris_data["n_train_images"] and all(r["sentences_num"] == 4 for r in train)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exist" in again.stderr
