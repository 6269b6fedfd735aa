"""VGPhraseCut v0 read from a hand-made sample in its own layout, its unseen subset, and evaluation on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pseudo_ris.data import ReferDataError
from pseudo_ris.data.phrasecut import load_phrasecut
from pseudo_ris.data.sources import open_dataset

def test_reads_tasks_splits_and_unseen_subset(phrasecut_root):
    ds = load_phrasecut(phrasecut_root, ["val", "test", "unseen"])
    assert ds.splits == ["val", "test", "unseen"]
    assert [r["task_id"] for r in ds.refs_in_split("test")] == ["11__1", "11__2", "12__3"]
    assert [r["task_id"] for r in ds.refs_in_split("unseen")] == ["11__2", "12__3"]  # tree, cloud: not COCO
    assert [s.sentence for s in ds.samples("unseen")] == ["tall trees", "white cloud"]
    ids = [s.sent_id for split in ds.splits for s in ds.samples(split)]
    assert len(ids) == len(set(ids)) == 6  # unseen refs get ids of their own
    dog = ds.ref_mask(ds.refs_in_split("test")[0])
    expected = np.zeros((30, 40), bool)
    expected[2:9, 2:11] = True  # the PhraseCut API's PIL rasterization, outline included
    assert np.array_equal(dog, expected)
    trees = ds.ref_mask(ds.refs_in_split("unseen")[0])
    assert trees[15, 26] and trees[3, 36] and not trees[25, 5]  # union of both instances
    assert ds.load_image(12).shape == (20, 20, 3)
    assert ds.anns[ds.refs_in_split("test")[1]["ann_id"]]["bbox"] == [20.0, 2.0, 18.0, 18.0]
    only_test = open_dataset(phrasecut_root, "phrasecut", splits=["test"])
    assert only_test.splits == ["test"]


def test_missing_files_are_named(phrasecut_root, tmp_path):
    with pytest.raises(ReferDataError, match="VGPhraseCut not found under"):
        load_phrasecut(tmp_path / "nothing")
    with pytest.raises(ReferDataError, match=r"refer_miniv.json not found"):
        load_phrasecut(phrasecut_root, ["miniv"])
    with pytest.raises(ReferDataError, match="unknown PhraseCut split 'testA'"):
        load_phrasecut(phrasecut_root, ["testA"])
    info = phrasecut_root / "VGPhraseCut_v0" / "image_data_split.json"
    info.write_text(json.dumps(json.loads(info.read_text())[:1]))
    with pytest.raises(ReferDataError, match=r"task #2 \(12__3\) of .*refer_test.json: image 12 is not in"):
        load_phrasecut(phrasecut_root, ["test"])


def test_evaluates_with_the_refcoco_table(phrasecut_root, tmp_path):
    import lightning as L
    import torch

    from ris_models.datamodule import RISDataModule
    from ris_models.evaluation import evaluate_splits
    from ris_models.lit_module import RISLitModule
    from ris_models.registry import build_model

    torch.manual_seed(0)
    model = build_model("lavt_tiny", input_size=64).eval()
    dm = RISDataModule(phrasecut_root, "phrasecut", mode="human", val_splits=["test"], eval_splits=["test", "unseen"],
                       input_size=64, image_mean=model.image_mean, image_std=model.image_std, batch_size=4)
    assert dm.eval_splits == ["test", "unseen"] and len(dm.eval_dataset("unseen")) == 2
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    results = evaluate_splits(trainer, RISLitModule(model), dm, None, tmp_path / "eval", verbose=False)
    assert set(results) == {"test", "unseen"}
    assert results["test"]["n"] == 3 and results["unseen"]["n"] == 2
    assert {"mIoU", "oIoU", "P@0.5", "P@0.9"} <= set(results["test"])
