"""Generation store usability: a failed start blocks nothing, messages name the real cause, stages that receive
nothing fail loudly, and each setup gets its own default output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from pseudo_ris.generation import runner

CONF = Path(__file__).resolve().parents[1] / "conf"
FAST = ["decoding.settings=[{kind: beam, value: 2}, {kind: topk, value: 3, distinctive: true}]",
        "decoding.max_len=6", "decoding.min_len=3", "progress=false", "report.enabled=false"]


def _cfg(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return runner._plain(compose("generate", overrides=[*FAST, *overrides]))


@pytest.fixture()
def folder(tmp_path) -> Path:
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    pixels = np.full((48, 64, 3), 200, np.uint8)
    pixels[10:30, 10:30] = (220, 30, 30)
    Image.fromarray(pixels).save(img_dir / "a.png")
    return img_dir


def test_missing_coca_file_is_named_and_failed_start_leaves_no_meta(folder, tmp_path):
    out = tmp_path / "gen"
    missing = tmp_path / "weights" / "coca.pt"
    # checked before any work: the message names the option and the file
    with pytest.raises(runner.PseudoRISError, match=f"generator.captioner.pretrained={missing}: file not found"):
        runner.run(_cfg("source=folder", f"image_dir={folder}", f"out_dir={out}",
                        "generator/captioner=synthref_shipped", f"generator.captioner.pretrained={missing}"))
    assert not (out / "meta.json").exists()


def test_meta_of_a_start_that_generated_nothing_does_not_block(folder, tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"seed": 99, "masks": "gt"}))  # left by an earlier failed start
    summary = runner.run(_cfg("source=folder", f"image_dir={folder}", f"out_dir={out}", "sam.points_per_side=4"))
    assert summary["images"] == 1 and summary["candidates"] > 0
    assert json.loads((out / "meta.json").read_text())["seed"] == 0
    # once images are finished, another setup is refused
    (out / "meta.json").write_text(json.dumps({**json.loads((out / "meta.json").read_text()), "seed": 99}))
    with pytest.raises(runner.PseudoRISError, match="different run configuration"):
        runner.run(_cfg("source=folder", f"image_dir={folder}", f"out_dir={out}", "sam.points_per_side=4"))


def test_zero_images_and_no_masks_fail_loudly(folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(runner.GenerateConfigError, match=f"the image source has no images: .*{empty}"):
        runner.run(_cfg("source=folder", f"image_dir={empty}", f"out_dir={tmp_path / 'o1'}"))
    assert not (tmp_path / "o1" / "meta.json").exists()
    with pytest.raises(runner.EmptyStageError, match="no masks on any of the 1 images"):
        runner.run(_cfg("source=folder", f"image_dir={folder}", f"out_dir={tmp_path / 'o2'}", "sam.checkpoint=null",
                        "sam.points_per_side=4", "sam.pred_iou_thresh=1e9"))


def test_default_out_dir_is_one_folder_per_setup():
    base = runner.default_out_dir(_cfg())
    assert base.startswith("outputs/generate/synthref_synthref_sam_coca_tiny_1shards_")
    assert runner.default_out_dir(_cfg("filter.threshold=1.2", "max_images=3", "stage=filter")) == base
    others = {runner.default_out_dir(_cfg(o)) for o in ("masks=gt", "num_shards=4", "seed=1",
                                                        "generator/captioner=synthref_shipped", "sam.checkpoint=null")}
    assert len(others) == 5 and base not in others
