"""Scoring external predictions (tools/evaluate.py predictions=...) on a tiny SynthRef built by the project's builder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from pseudo_ris.data.masks import mask_to_rle
from pseudo_ris.data.refer import ReferDataset
from ris_models.evaluation import evaluate
from ris_models.predictions import PredictionsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthref(tmp_path_factory) -> dict:
    from pseudo_ris.synthref import build_synthref

    root = build_synthref(tmp_path_factory.mktemp("synthref"), seed=0, num_images=30, pool_images=0, progress=False)
    ds = ReferDataset(root, "synthref")
    return {"root": root, "ds": ds, "samples": ds.samples("val")}


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))


def _run(data: dict, predictions: Path, *extra: str) -> dict:
    return evaluate(_cfg(f"predictions={predictions}", "dataset=synthref", "split=val", f"data_root={data['root']}",
                         *extra))["val"]


def _write_pngs(folder: Path, masks: dict[int, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for sent_id, mask in masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{sent_id}.png")
    return folder


def _perturbed(data: dict) -> tuple[dict[int, np.ndarray], float, float]:
    """Ground truth for every sentence except: the first predicted empty (IoU 0), the second as the whole image
    (IoU |gt| / (H W)). Returns the masks and the hand-computed mIoU and oIoU."""
    ds, samples = data["ds"], data["samples"]
    masks = {s.sent_id: ds.ann_mask(s.ann_id) for s in samples}
    a, b = samples[0], samples[1]
    area_a, area_b = int(masks[a.sent_id].sum()), int(masks[b.sent_id].sum())
    masks[a.sent_id] = np.zeros_like(masks[a.sent_id])
    masks[b.sent_id] = np.ones_like(masks[b.sent_id])
    hw = masks[b.sent_id].size
    rest = sum(int(ds.ann_mask(s.ann_id).sum()) for s in samples[2:])
    n = len(samples)
    miou = (n - 2 + area_b / hw) / n
    oiou = (rest + area_b) / (rest + area_a + hw)
    return masks, miou, oiou


def test_perfect_predictions_score_100(synthref, tmp_path):
    ds = synthref["ds"]
    folder = _write_pngs(tmp_path / "perfect", {s.sent_id: ds.ann_mask(s.ann_id) for s in synthref["samples"]})
    out = _run(synthref, folder)
    assert out["mIoU"] == 1.0 and out["oIoU"] == 1.0 and out["P@0.9"] == 1.0
    assert out["n"] == len(synthref["samples"]) > 2
    written = json.loads((folder / "metrics_synthref.json").read_text())
    assert written["protocol"]["name"] == "project" and written["splits"]["val"]["mIoU"] == 1.0
    # LAVT's protocol scores at its input size: both masks stretched with NEAREST -> still perfect
    assert _run(synthref, folder, "eval=lavt", "eval.input_size=64")["mIoU"] == 1.0
    with pytest.raises(PredictionsError, match="eval.input_size"):  # no model to take the input size from
        _run(synthref, folder, "eval=lavt")
    assert (folder / "metrics_synthref_lavt.json").is_file()


def test_perturbed_predictions_png_and_rle_json(synthref, tmp_path):
    masks, miou, oiou = _perturbed(synthref)
    out = _run(synthref, _write_pngs(tmp_path / "pngs", masks))
    assert out["mIoU"] == pytest.approx(miou, abs=1e-12) and out["oIoU"] == pytest.approx(oiou, abs=1e-12)
    n = len(masks)
    assert out["P@0.5"] == pytest.approx((n - 2) / n)  # the whole-image one covers far less than half
    records = [{"sent_id": k, "segmentation": mask_to_rle(m)} for k, m in masks.items()]
    (tmp_path / "preds.json").write_text(json.dumps(records))
    same = _run(synthref, tmp_path / "preds.json")
    assert same["mIoU"] == pytest.approx(miou, abs=1e-12) and same["oIoU"] == pytest.approx(oiou, abs=1e-12)
    (tmp_path / "by_id.json").write_text(json.dumps({str(k): mask_to_rle(m) for k, m in masks.items()}))
    assert _run(synthref, tmp_path / "by_id.json")["mIoU"] == pytest.approx(miou, abs=1e-12)
    # LAVT scores at its input size: both masks stretched with PIL NEAREST; the whole-image prediction then
    # covers all 48x48 pixels and its target what NEAREST keeps of it
    b = synthref["samples"][1]
    small = np.asarray(Image.fromarray(synthref["ds"].ann_mask(b.ann_id).astype(np.uint8)).resize((48, 48),
                                                                                                 Image.NEAREST))
    lavt = _run(synthref, tmp_path / "preds.json", "eval=lavt", "eval.input_size=48")
    assert lavt["mIoU"] == pytest.approx((n - 2 + int((small > 0).sum()) / 48 ** 2) / n, abs=1e-12)
    cris = _run(synthref, tmp_path / "preds.json", "eval=cris")
    assert "oIoU" not in cris and cris["mIoU"] < miou  # I / (U + 1e-6)


def test_missing_extra_partial_and_wrong_size(synthref, tmp_path):
    ds, samples = synthref["ds"], synthref["samples"]
    masks = {s.sent_id: ds.ann_mask(s.ann_id) for s in samples}
    train_ids = [s.sent_id for s in ds.samples("train")[:7]]
    folder = _write_pngs(tmp_path / "p", {**{k: masks[k] for k in list(masks)[1:]},
                                          **{t: np.zeros((3, 3), bool) for t in train_ids}})
    missing = samples[0].sent_id
    with pytest.raises(PredictionsError, match=rf"1 of {len(samples)} sentences have no prediction: {missing};"
                                               r".*allow_partial=true"):
        _run(synthref, folder)
    out = _run(synthref, folder, "allow_partial=true")
    assert out["n"] == len(samples) - 1 and out["mIoU"] == 1.0  # extra (train) ids are listed and ignored
    notes = json.loads((folder / "metrics_synthref.json").read_text())["notes"]
    listed = ", ".join(str(i) for i in sorted(train_ids)[:5])
    assert f"7 prediction id(s) not among the scored sentences (ignored): {listed}, ... (2 more)" in notes
    bad = samples[1].sent_id
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(folder / f"{bad}.png")
    with pytest.raises(PredictionsError, match=rf"{bad}\.png: mask is 5x7 \(HxW\) but image"):
        _run(synthref, folder, "allow_partial=true")
    (folder / "notes.png").write_bytes(b"")
    with pytest.raises(PredictionsError, match="notes.png is not named <sent_id>.png"):
        _run(synthref, folder)


def test_cli_refuses_a_partial_set_in_one_line(synthref, tmp_path):
    ds, samples = synthref["ds"], synthref["samples"]
    folder = _write_pngs(tmp_path / "p", {s.sent_id: ds.ann_mask(s.ann_id) for s in samples[1:]})
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), f"predictions={folder}",
                          "dataset=synthref", "split=val", f"data_root={synthref['root']}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "have no prediction" in res.stderr
    assert "Traceback" not in res.stderr
