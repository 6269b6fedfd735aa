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


def test_store_identity_follows_the_bytes_of_shipped_weights(tmp_path, monkeypatch):
    """``pretrained=shipped`` names a file whose bytes change when new weights are shipped: the default store and
    the store's run identity must change with them, so labels of old and new weights never share a store."""
    from types import SimpleNamespace

    import pseudo_ris.foundation.registry as registry
    from pseudo_ris.generation.store import check_meta

    monkeypatch.setattr(registry, "SHIPPED_DIR", tmp_path)
    for kind, name in registry.SHIPPED_FILES.items():
        (tmp_path / name).write_bytes(f"{kind} weights".encode())
    (tmp_path / "coca_tiny.pt").write_bytes(b"old coca weights")
    cfg = _cfg("generator/captioner=synthref_shipped", "sam.checkpoint=shipped")
    source = SimpleNamespace(description="pool", image_dir=str(tmp_path))
    old_dir, old_meta = runner.default_out_dir(cfg), runner.run_meta(cfg, source)
    # sha1(b"old coca weights")[:16], computed outside the code under test with hashlib on the command line
    assert old_meta["weights"]["coca"] == "eaf9551ab78faa7e"
    assert set(old_meta["weights"]) == {"coca", "sam"}
    assert runner.default_out_dir(cfg) == old_dir  # same bytes, same store
    store = tmp_path / "store"
    store.mkdir()
    check_meta(store, old_meta, write=True)
    (store / "images.shard0of1.jsonl").write_text('{"key": "x", "status": "ok"}\n')  # a finished image

    (tmp_path / "coca_tiny.pt").write_bytes(b"new coca weights")
    new_meta = runner.run_meta(cfg, source)
    assert runner.default_out_dir(cfg) != old_dir
    assert new_meta["weights"]["coca"] != old_meta["weights"]["coca"]
    assert new_meta["weights"]["sam"] == old_meta["weights"]["sam"]
    with pytest.raises(runner.PseudoRISError, match="different run configuration"):
        check_meta(store, new_meta, write=False)
    # GT masks read no SAM file; open_clip tags (no file) add nothing, so such stores keep their identity
    assert set(runner.run_meta(_cfg("generator/captioner=synthref_shipped", "masks=gt"), source)["weights"]) == {"coca"}
    assert "weights" not in runner.run_meta(_cfg("sam.checkpoint=null"), source)
