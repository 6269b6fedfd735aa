"""tools/doctor.py on hand-made small copies: every problem reported (never a crash), counts against published."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pseudo_ris.data.doctor import diagnose
from pseudo_ris.data.masks import mask_to_rle



def _text(report) -> str:
    return report.format()


def test_small_refcoco_copy_reports_counts_images_geometry_and_decoding(handmade_refer):
    path = handmade_refer / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    instances["annotations"][1]["segmentation"] = mask_to_rle(np.ones((4, 4), bool))  # 4x4 RLE on a 20x30 image
    instances["annotations"][2]["segmentation"] = [[0, 0, 0, 0, 0, 0]]  # decodes to nothing
    path.write_text(json.dumps(instances))
    (handmade_refer / "images" / "mscoco" / "images" / "train2014" / "img2.jpg").unlink()
    report = diagnose(handmade_refer, "refcoco")
    text = _text(report)
    assert "[ok] refs file:" in text and "[ok] instances file:" in text and "[ok] image directory:" in text
    assert "[wrong] split train: 1 refs, published refcoco (unc): 42,404" in text
    assert "[wrong] split testB: no refs (published refcoco (unc): 1,810)" in text
    assert "[wrong] split val: 1 refs, published refcoco (unc): 3,811" in text
    assert "RLE size 4x4 differs from its image's 20x30" in text and "annotation 11 (image 1, img1.jpg)" in text
    assert "[missing] 1 of 2 images not found in" in text and "img2.jpg" in text
    assert "[wrong] 2 of 3 referenced annotations do not decode to a mask: 11 (" in text
    assert "12 (" in text and "empty mask" in text
    assert report.problems == 7 and text.endswith("7 problem(s) found")


def test_missing_layout_is_named(handmade_refer, tmp_path):
    (handmade_refer / "refcoco" / "instances.json").unlink()
    text = _text(diagnose(handmade_refer, "refcoco"))
    assert f"[missing] instances file: {handmade_refer / 'refcoco' / 'instances.json'} not found" in text
    text = _text(diagnose(handmade_refer, "refcocog"))
    assert f"[missing] dataset directory: {handmade_refer / 'refcocog'} not found" in text
    assert "directories under" in text and "refcoco" in text
    assert "[missing] data_root:" in _text(diagnose(tmp_path / "nope", "refcoco"))
    (handmade_refer / "refcoco" / "refs(unc).p").write_bytes(b"garbage")
    (handmade_refer / "refcoco" / "instances.json").write_text("{}")
    assert "[wrong] cannot read the dataset:" in _text(diagnose(handmade_refer, "refcoco"))


def test_phrasecut_copy(phrasecut_root):
    report = diagnose(phrasecut_root, "phrasecut")
    text = _text(report)
    assert "[wrong] split test: 3 refs, published VGPhraseCut v0: 14,354" in text
    assert "[wrong] split val: 1 refs, published VGPhraseCut v0: 20,316" in text
    assert "refer files not present for split(s) ['train', 'miniv']" in text
    assert "unseen (test tasks outside COCO's 80 categories): 2 refs" in text
    assert "[ok] masks: all 4 referenced annotations decode" in text
    assert report.problems == 2


def test_cli_exit_codes(handmade_refer, tmp_path):
    tool = Path(__file__).resolve().parents[1] / "tools" / "doctor.py"
    run = lambda *a: subprocess.run([sys.executable, str(tool), *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300, cwd=tmp_path)
    found = run(f"data_root={handmade_refer}", "dataset=refcoco")
    assert found.returncode == 1 and "problem(s) found" in found.stdout and not found.stderr.strip()
    bad = run(f"data_root={handmade_refer}", "dataset=refcoco", "colour=red")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown option(s) ['colour']")
    assert run("--help").returncode == 0
