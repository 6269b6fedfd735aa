"""End-to-end pseudo-label generation with tiny random models on SynthRef-like images: REFER output readable by the
data layer, resume after an interruption, unreadable images, re-filtering without captioning, sharding, SAM masks."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from pseudo_ris.data.masks import rle_to_mask
from pseudo_ris.data.refer import ReferDataset
from pseudo_ris.generation import runner
from pseudo_ris.generation.store import CandidateStore, load_all
from pseudo_ris.synthref import build_synthref

torch.set_num_threads(1)
CONF = Path(__file__).resolve().parents[1] / "conf"
# Small decoding: 1 beam-search caption (2 beams) + 1 distinctive top-k sample per view, 8 tokens at most.
FAST = ["decoding.settings=[{kind: beam, value: 2}, {kind: topk, value: 3, distinctive: true}]",
        "decoding.max_len=8", "decoding.min_len=3", "progress=false", "report.max_images=2"]


@pytest.fixture(scope="module")
def synthref_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthref")
    build_synthref(root, seed=0, num_images=0, pool_images=4, progress=False)
    return root


def _cfg(out: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("generate", overrides=[f"out_dir={out}", *FAST, *overrides])
    return runner._plain(cfg)


def _rows(out: Path) -> list[dict]:
    _, cands = load_all(out)
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in cands),
                  key=lambda r: (r["key"], r["cand_index"]))


def test_gt_masks_end_to_end_readable_by_data_layer(synthref_root, tmp_path):
    out = tmp_path / "gen"
    summary = runner.run(_cfg(out, f"data_root={synthref_root}", "masks=gt", "max_images=2"))
    pool = ReferDataset(synthref_root, "synthref_pool")
    ds = ReferDataset(out, "pseudo", split_by="pseudo")
    assert ds.splits == ["train"] and len(ds.refs) == summary["refs"] > 0
    assert summary["images"] == 2 and summary["candidates"] == len(_rows(out)) > 0
    assert 0 < summary["kept"] <= summary["candidates"]
    gt_masks = [pool.ann_mask(a) for a in pool.anns if pool.anns[a]["image_id"] in ds.images]
    for ref in ds.refs:
        assert ref["sentences"] and len({s["sent"] for s in ref["sentences"]}) == len(ref["sentences"])
        mask = ds.ref_mask(ref)  # the annotation carries the mask RLE of a GT instance (masks=gt)
        assert any(np.array_equal(mask, g) for g in gt_masks)
        assert ds.image_path(ref["image_id"]).is_file()  # images referenced, not copied
        assert ds.load_image(ref["image_id"]).shape == (128, 128, 3)
    # every kept candidate of the store is a sentence of its mask's ref
    kept = {(r["image_id"], r["text"]) for r in json.loads("[" + ",".join(
        (out / "candidates.jsonl").read_text().splitlines()) + "]") if r["kept"]}
    sents = {(ref["image_id"], s["raw"]) for ref in ds.refs for s in ref["sentences"]}
    assert kept == sents
    assert (out / "report.html").read_text().count("data:image/png;base64") >= 2
    assert json.loads((out / "summary.json").read_text())["refs"] == summary["refs"]


def test_resume_after_interruption_matches_clean_sharded_run(synthref_root, tmp_path):
    # clean run, two shards generated separately then filtered together
    clean = tmp_path / "clean"
    for shard in (0, 1):
        runner.run(_cfg(clean, f"data_root={synthref_root}", "masks=gt", "stage=generate", f"shard={shard}",
                        "num_shards=2"))
    clean_summary = runner.run(_cfg(clean, f"data_root={synthref_root}", "masks=gt", "stage=filter",
                                    "num_shards=2"))
    # interrupted single-shard run: killed after 2 images, then a torn write and an orphan row are added
    out = tmp_path / "resumed"

    def interrupt(n):
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(_cfg(out, f"data_root={synthref_root}", "masks=gt"), on_image=interrupt)
    store = CandidateStore(out)
    assert len(store.done) == 2
    cands = out / "candidates.shard0of1.jsonl"
    orphan = dict(json.loads(cands.read_text().splitlines()[0]), key="1000004")  # image never committed
    with open(cands, "a") as f:
        f.write(json.dumps(orphan) + "\n" + '{"image_id": 1000003, "te')  # torn last line
    with open(out / "images.shard0of1.jsonl", "a") as f:
        f.write('{"key": "1000003", "sta')
    summary = runner.run(_cfg(out, f"data_root={synthref_root}", "masks=gt"))
    assert summary["run_skipped_done"] == 2 and summary["run_processed"] == 2
    rows = _rows(out)
    keys = [(r["key"], r["cand_index"]) for r in rows]
    assert len(keys) == len(set(keys))  # no duplicate rows
    assert rows == _rows(clean)  # same candidates as the clean run (seeds per image, not per shard / restart)
    with open(out / "pseudo" / "refs(pseudo).p", "rb") as f, open(clean / "pseudo" / "refs(pseudo).p", "rb") as g:
        assert pickle.load(f) == pickle.load(g)
    assert summary["kept"] == clean_summary["kept"] and summary["complete"]


def test_refilter_reuses_candidates_without_captioning(synthref_root, tmp_path, monkeypatch):
    out = tmp_path / "gen"
    base = runner.run(_cfg(out, f"data_root={synthref_root}", "masks=gt", "max_images=2"))
    before = _rows(out)

    def no_models(*a, **k):
        raise AssertionError("stage=filter must not build models")

    monkeypatch.setattr(runner, "build_pipeline", no_models)
    strict = runner.run(_cfg(out, f"data_root={synthref_root}", "masks=gt", "stage=filter", "max_images=2",
                             "filter.threshold=1e9", "filter.fallback=drop"))
    assert strict["kept"] == 0 and strict["refs"] == 0
    assert ReferDataset(out, "pseudo", split_by="pseudo").refs == []
    loose = runner.run(_cfg(out, f"data_root={synthref_root}", "masks=gt", "stage=filter", "max_images=2",
                            "filter.threshold=1e-12", "filter.key=uniqueness"))
    assert loose["kept"] == loose["candidates"] >= base["kept"]
    topk = runner.run(_cfg(out, f"data_root={synthref_root}", "masks=gt", "stage=filter", "max_images=2",
                           "filter.threshold=1e9", "filter.fallback=topk", "filter.topk=2"))
    assert topk["refs"] == topk["masks_kept"] == base["masks_kept"]  # every mask keeps its 2 best
    assert _rows(out) == before  # the shard files are untouched by filtering
    with pytest.raises(runner.PseudoRISError, match="no candidate store"):
        runner.run(_cfg(tmp_path / "empty", f"data_root={synthref_root}", "stage=filter"))


def test_folder_source_with_unreadable_image_and_sam_masks(tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        pixels = np.full((64, 80, 3), 200, np.uint8)
        pixels[10:40, 10:40] = (220, 30, 30)
        pixels[35:60, 45:75] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(img_dir / f"ok{i}.png")
    (img_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "gen"
    summary = runner.run(_cfg(out, "source=folder", f"image_dir={img_dir}", "masks=sam", "sam.points_per_side=4",
                              "sam.pred_iou_thresh=-100", "sam.stability_score_thresh=0", "selection.max_masks=3",
                              "selection.min_area=1", "selection.max_area_frac=1.0"))
    assert [u["file_name"] for u in summary["unreadable"]] == ["broken.png"]
    assert "broken.png" in summary["unreadable"][0]["error"]
    assert summary["images"] == 3 and summary["images_ok"] + summary["images_no_masks"] == 2
    ds = ReferDataset(out, "pseudo", split_by="pseudo")
    assert len(ds.refs) == summary["refs"] > 0
    for ref in ds.refs:
        assert ds.image_path(ref["image_id"]).name in ("ok0.png", "ok1.png")
        assert ds.ref_mask(ref).shape == (64, 80)
    images, _ = load_all(out)
    for img in images:
        for m in img["masks"]:
            assert rle_to_mask(m["rle"]).sum() == m["area"] > 0
    # impossible SAM thresholds: every image has no mask -> no refs, no crash
    out2 = tmp_path / "none"
    none = runner.run(_cfg(out2, "source=folder", f"image_dir={img_dir}", "sam.pred_iou_thresh=1e9"))
    assert none["images_no_masks"] == 2 and none["refs"] == 0
    assert ReferDataset(out2, "pseudo", split_by="pseudo").refs == []


def test_resume_with_other_config_is_refused(synthref_root, tmp_path):
    out = tmp_path / "gen"
    runner.run(_cfg(out, f"data_root={synthref_root}", "masks=gt", "max_images=1", "stage=generate"))
    with pytest.raises(runner.PseudoRISError, match="different run configuration"):
        runner.run(_cfg(out, f"data_root={synthref_root}", "masks=gt", "max_images=1", "stage=generate", "seed=5"))


def test_external_detections_through_the_config(tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for name in ("a.png", "b.png"):
        pixels = np.full((64, 64, 3), 90, np.uint8)
        pixels[8:40, 8:40] = (30, 200, 30)
        Image.fromarray(pixels).save(img_dir / name)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"file_name": "a.png", "bbox": [8, 8, 32, 32], "score": 0.9, "category_id": 1}]))
    out = tmp_path / "gen"
    summary = runner.run(_cfg(out, "source=folder", f"image_dir={img_dir}", "masks=external",
                              f"external.detections={dets}", "sam.points_per_side=4", "sam.pred_iou_thresh=-100",
                              "sam.stability_score_thresh=0", "selection.min_area=1", "selection.max_area_frac=1.0"))
    images = {i["file_name"]: i for i in load_all(out)[0]}
    assert len(images["a.png"]["masks"]) == 1 and images["a.png"]["masks"][0]["source"] == "external"
    assert images["b.png"]["status"] == "no_masks"  # no detection -> no mask, no crash
    assert summary["refs"] == 1


def test_checkpoints_load_through_the_config(synthref_root, tmp_path):
    """Trained foundation models plug in by path (a project CoCa checkpoint carries its config and tokenizer)."""
    from pseudo_ris.captioning import save_coca_checkpoint
    from pseudo_ris.masks import build_sam, save_sam_checkpoint

    cfg = _cfg(tmp_path / "x", f"data_root={synthref_root}")
    bundle = runner.build_captioner_bundle(cfg["generator"]["captioner"], "cpu")
    save_coca_checkpoint(bundle, tmp_path / "coca.pt")
    save_sam_checkpoint(build_sam("tiny"), tmp_path / "sam.pt")
    out = tmp_path / "gen"
    summary = runner.run(_cfg(out, f"data_root={synthref_root}", "masks=gt", "max_images=1",
                              "generator/captioner=synthref_shipped",
                              f"generator.captioner.pretrained={tmp_path}/coca.pt",
                              f"sam.checkpoint={tmp_path}/sam.pt"))
    assert summary["refs"] > 0
    loaded = runner.build_captioner_bundle({"name": None, "pretrained": str(tmp_path / "coca.pt")}, "cpu")
    assert loaded.tokenizer.vocab_size == bundle.tokenizer.vocab_size
    for (k, a), b in zip(bundle.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(runner.PseudoRISError, match="SAM checkpoint .*coca.pt"):
        runner.run(_cfg(tmp_path / "y", f"data_root={synthref_root}", "sam.checkpoint=" + str(tmp_path / "coca.pt"),
                        "max_images=1"))


def test_refer_source_labels_train_images_only(handmade_refer, tmp_path):
    out = tmp_path / "gen"
    summary = runner.run(_cfg(out, "source=refer", "dataset=refcoco", f"data_root={handmade_refer}", "masks=gt"))
    images, _ = load_all(out)
    assert [i["image_id"] for i in images] == [1]  # image 2 has no train ref
    ds = ReferDataset(out, "pseudo", split_by="pseudo")
    src = ReferDataset(handmade_refer, "refcoco")
    assert summary["refs"] == len(ds.refs) == 2  # both GT instances of image 1, polygon and RLE
    assert {c["name"] for c in ds.categories.values()} == {"square", "rectangle"}  # masks=gt keeps categories
    for ref in ds.refs:
        gt_ann = {1: 10, 2: 11}[ref["category_id"]]  # square = ann 10 (polygon), rectangle = ann 11 (RLE)
        assert np.array_equal(ds.ref_mask(ref), src.ann_mask(gt_ann))
        assert ds.image_path(ref["image_id"]) == src.image_path(1)


def test_command_line_entry_point(synthref_root, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "cli"
    cmd = [sys.executable, str(root / "tools" / "generate.py"), f"data_root={synthref_root}", f"out_dir={out}",
           "masks=gt", "max_images=1", *FAST]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generation summary" in done.stdout and "refs:" in done.stdout
    assert ReferDataset(out, "pseudo", split_by="pseudo").refs
    # bad options raise project errors (the entry point prints them as one line and exits with status 2)
    with pytest.raises(runner.PseudoRISError, match="missing"):
        runner.run(_cfg(out, "source=folder", f"image_dir={tmp_path / 'missing'}"))
    with pytest.raises(runner.PseudoRISError, match="data_root"):
        runner.run(_cfg(out, "source=refer", "dataset=refcoco"))


class _ColourScorer:
    """A transparent 'CLIP': image feature = mean RGB of the view, text feature = RGB of the colour word."""

    image_size = 32
    RGB = {"red": (1.0, 0.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    def __init__(self):
        self.image_calls, self.text_calls = [], []

    def image_features(self, views):
        self.image_calls.append(views.clone())
        return torch.nn.functional.normalize(views.mean(dim=(2, 3)), dim=-1)

    def text_features(self, texts):
        self.text_calls.append(list(texts))
        vecs = [next((self.RGB[w] for w in t.split() if w in self.RGB), (0.3, 0.3, 0.3)) for t in texts]
        return torch.nn.functional.normalize(torch.tensor(vecs), dim=-1)

    def logits(self, a, b):
        return 10.0 * a @ b.T


class _FixedCaptioner:
    image_size, mean = 24, (0.5, 0.5, 0.5)

    def __init__(self, captions):
        self.captions = captions

    def __call__(self, views, seed):
        from types import SimpleNamespace

        return [[SimpleNamespace(text=t, view=3, setting="fixed") for t in self.captions] for _ in range(len(views))]


def test_pipeline_scores_masked_crops_with_noun_prompts_and_context_crops_with_captions():
    from pseudo_ris.crops import make_views
    from pseudo_ris.filtering import RuleNounExtractor
    from pseudo_ris.generation import ImageItem, PseudoLabelPipeline
    from pseudo_ris.masks import ObjectMask

    img = np.full((40, 60, 3), 128, np.uint8)
    img[10:30, 5:25] = (255, 0, 0)
    img[10:30, 35:55] = (0, 0, 255)
    masks = [np.zeros((40, 60), bool) for _ in range(2)]
    masks[0][10:30, 5:25] = True
    masks[1][10:30, 35:55] = True
    scorer = _ColourScorer()
    pipe = PseudoLabelPipeline(lambda image, image_id=None, file_name=None: [ObjectMask(m) for m in masks],
                               _FixedCaptioner(["a red square on the left", "the blue square"]), scorer,
                               RuleNounExtractor(), score_transform="logit")
    image_row, rows = pipe.process(img, ImageItem(1, "x.png", Path("x.png")))
    expected = make_views(img, masks, 32, fill=(0.5, 0.5, 0.5), margins=(1.2,))
    assert torch.allclose(scorer.image_calls[0], expected[:, 0])  # M: masked crops
    assert torch.allclose(scorer.image_calls[1], expected[:, 1])  # C: margin-1.2 crops
    assert {"a photo of a red square", "a photo of the blue square"} <= set(scorer.text_calls[0])
    by = {(r["mask_index"], r["text"]): r for r in rows}
    assert len(rows) == 4 and len(image_row["masks"]) == 2
    red_on_red, red_on_blue = by[(0, "a red square on the left")], by[(1, "a red square on the left")]
    assert red_on_red["noun"] == "a red square" and red_on_red["doc"] > 1 > red_on_blue["doc"]
    assert by[(1, "the blue square")]["doc"] > 1 > by[(0, "the blue square")]["doc"]
    # the stored vectors are the scores against every mask; DoC is recomputable from them
    assert red_on_red["M_all"][0] == red_on_red["M"] and len(red_on_red["C_all"]) == 2
    assert red_on_red["M_all"] == red_on_blue["M_all"]  # same caption -> same scores, only the target differs
    # a row names its mask by index; the image's done row holds each mask once
    assert "mask_rle" not in red_on_red
    masks_by_index = {m["index"]: rle_to_mask(m["rle"]) for m in image_row["masks"]}
    assert np.array_equal(masks_by_index[red_on_red["mask_index"]], masks[0])
    assert np.array_equal(masks_by_index[red_on_blue["mask_index"]], masks[1])
