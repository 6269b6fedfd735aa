"""SynthRef: scenes, the written REFER datasets, splits, held-out concepts, determinism, caching, CLI."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudo_ris.data.masks import mask_to_bbox
from pseudo_ris.data.refer import ReferDataset
from pseudo_ris.synthref import (BUILD_MARKER, SceneConfig, SynthRefConfig, SynthRefError, build_synthref,
                                 ensure_synthref, read_build_info, render_scene)
from pseudo_ris.synthref.build import image_rng, scene_for_split, STREAM_LABELLED, STREAM_POOL
from pseudo_ris.synthref.oracle import is_referential, objects_from_annotations
from pseudo_ris.synthref.preview import save_preview
from pseudo_ris.synthref.vocab import (ABSOLUTE_LOCATION_WORDS, ANGULAR_SHAPES, COLOUR_SYNONYMS, CURVED_SHAPES,
                                       SHAPE_SYNONYMS)

REPO = Path(__file__).resolve().parents[1]
TINY = {"num_images": 80, "pool_images": 12}
UNC_SPLITS = ["train", "val", "testA", "testB", "unseen"]
UMD_SPLITS = ["train", "val", "test", "unseen"]
DATASETS = ["synthref", "synthref+", "synthrefg", "synthref_pool"]


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_synthref(tmp_path_factory.mktemp("synthref"), seed=0, progress=False, **TINY)


@pytest.fixture(scope="module")
def datasets(built) -> dict[str, ReferDataset]:
    return {name: ReferDataset(built, name) for name in DATASETS}


# ------------------------------------------------------------------------------------------------ scenes
def test_render_scene_is_deterministic_and_consistent():
    cfg = SceneConfig()
    a = render_scene(np.random.default_rng(5), cfg)
    b = render_scene(np.random.default_rng(5), cfg)
    assert np.array_equal(a.image, b.image) and a.background == b.background
    assert [o.shape for o in a.objects] == [o.shape for o in b.objects]
    rng = np.random.default_rng(0)
    backgrounds = set()
    for _ in range(60):
        scene = render_scene(rng, cfg)
        backgrounds.add(scene.background)
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        assert 2 <= len(scene.objects) <= 8
        union = np.zeros((128, 128), dtype=int)
        for o in scene.objects:
            assert o.mask.dtype == bool and o.area >= cfg.min_visible_px
            assert o.area >= cfg.min_visible_frac * o.full_area - 1e-9
            assert o.bbox == mask_to_bbox(o.mask)
            union += o.mask
        assert union.max() == 1  # visible masks never overlap
    assert backgrounds == set(cfg.backgrounds)


def test_render_scene_restrictions_and_first_object():
    rng = np.random.default_rng(1)
    for _ in range(30):
        scene = render_scene(rng, None, shapes=["star", "heart"], colours=["red"], first={"shape": ["ring"]})
        assert scene.objects[0].shape == "ring"
        assert {o.shape for o in scene.objects[1:]} <= {"star", "heart", "ring"}
        assert {o.colour for o in scene.objects} == {"red"}


def test_distractor_rate_controls_same_shape_pairs():
    def repeated_share(rate: float) -> float:
        rng = np.random.default_rng(2)
        cfg = SceneConfig(distractor_rate=rate)
        scenes = [render_scene(rng, cfg) for _ in range(150)]
        return float(np.mean([len({o.shape for o in s.objects}) < len(s.objects) for s in scenes]))
    assert repeated_share(0.7) > repeated_share(0.0) + 0.2
    rng = np.random.default_rng(3)
    assert all(len({o.shape for o in render_scene(rng, SceneConfig(distractor_rate=1.0)).objects}) == 1
               for _ in range(20))


def test_big_objects_are_bigger_than_small_ones():
    rng = np.random.default_rng(4)
    areas: dict[tuple[str, str], list[int]] = {}
    for _ in range(80):
        for o in render_scene(rng).objects:
            areas.setdefault((o.shape, o.size), []).append(o.full_area)
    for shape in SceneConfig().shapes:  # absolute size classes do not overlap, shape by shape
        assert min(areas[shape, "big"]) > 1.5 * max(areas[shape, "small"]), shape


# ------------------------------------------------------------------------------------------------ datasets
def test_reader_reads_all_datasets_and_masks_match_the_scenes(built, datasets):
    cfg = SynthRefConfig.from_any(None, seed=0, **TINY)
    splits = {img["id"]: img["split"] for img in datasets["synthref"].images.values()}
    for name, ds in datasets.items():
        assert ds.refs, name
        for ref in ds.refs:
            mask = ds.ref_mask(ref)
            assert mask.any()
            assert np.array_equal(mask, ds.ann_mask(ref["ann_id"]))
    # the stored annotation masks and images are exactly the rendered scenes (labelled and pool)
    ds = datasets["synthref"]
    for image_id in list(ds.images)[:10]:
        scene = scene_for_split(image_rng(0, STREAM_LABELLED, image_id - 1), cfg, splits[image_id])
        assert np.array_equal(ds.load_image(image_id), scene.image)
        anns = sorted(ds.anns_by_image[image_id], key=lambda a: a["id"])
        assert len(anns) == len(scene.objects)
        for ann, obj in zip(anns, scene.objects):
            assert np.array_equal(ds.ann_mask(ann["id"]), obj.mask)
            assert ann["attributes"]["shape"] == obj.shape == ds.categories[ann["category_id"]]["name"]
            assert ann["area"] == obj.area and ann["bbox"] == obj.bbox and ann["iscrowd"] == 0
    pool = datasets["synthref_pool"]
    first = min(pool.images)
    scene = render_scene(image_rng(0, STREAM_POOL, 0), cfg.scene)
    assert np.array_equal(pool.load_image(first), scene.image)


def test_annotations_carry_attributes(datasets):
    for ann in datasets["synthref"].anns.values():
        attrs = ann["attributes"]
        assert {"shape", "colour", "size", "family"} <= set(attrs)
        assert attrs["size"] in ("small", "big")
        assert set(ann) >= {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}


def test_splits_as_specified(datasets):
    assert datasets["synthref"].splits == UNC_SPLITS
    assert datasets["synthref+"].splits == UNC_SPLITS
    assert datasets["synthrefg"].splits == UMD_SPLITS
    assert datasets["synthref_pool"].splits == ["train"]
    assert datasets["synthref"].split_by == "unc" and datasets["synthrefg"].split_by == "umd"


def test_split_is_fixed_per_image_across_datasets(datasets):
    image_split = {i: img["split"] for i, img in datasets["synthref"].images.items()}
    for name in ("synthref", "synthref+", "synthrefg"):
        for ref in datasets[name].refs:
            expected = image_split[ref["image_id"]]
            if name == "synthrefg" and expected in ("testA", "testB"):
                expected = "test"
            assert ref["split"] == expected


def test_every_ref_has_distinct_paraphrases_that_ground_to_the_target(datasets):
    for name in ("synthref", "synthref+", "synthrefg"):
        ds = datasets[name]
        for ref in ds.refs:
            texts = [s["sent"] for s in ref["sentences"]]
            assert 2 <= len(texts) <= 3 and len(set(texts)) == len(texts)
            assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
            anns = sorted(ds.anns_by_image[ref["image_id"]], key=lambda a: a["id"])
            target = [a["id"] for a in anns].index(ref["ann_id"])
            objects = objects_from_annotations(anns)
            for text in texts:
                assert is_referential(text, objects, target), (name, text)


def _held_out_words(cfg: SynthRefConfig) -> set[str]:
    words = set()
    for s in cfg.held_out_shapes:
        words.update(SHAPE_SYNONYMS[s])
    for c in cfg.held_out_colours:
        words.update(COLOUR_SYNONYMS[c])
    return words


def test_held_out_concepts_never_in_train(datasets):
    cfg = SynthRefConfig()
    words = _held_out_words(cfg)
    held = set(cfg.held_out_shapes) | set(cfg.held_out_colours)
    for name in ("synthref", "synthref+", "synthrefg"):
        ds = datasets[name]
        for ref in ds.refs_in_split("train"):
            for sent in ref["sentences"]:
                assert not words & set(sent["tokens"]), (name, sent["sent"])
        train_images = {r["image_id"] for r in ds.refs_in_split("train")}
        for image_id in train_images:  # not even as an unnamed distractor
            for ann in ds.anns_by_image[image_id]:
                assert not held & {ann["attributes"]["shape"], ann["attributes"]["colour"]}
        for ref in ds.refs_in_split("unseen"):  # every unseen target uses a held-out concept, and names it
            attrs = ds.anns[ref["ann_id"]]["attributes"]
            assert held & {attrs["shape"], attrs["colour"]}
            own = _held_out_words(SynthRefConfig.from_any({
                "held_out_shapes": [s for s in cfg.held_out_shapes if s == attrs["shape"]],
                "held_out_colours": [c for c in cfg.held_out_colours if c == attrs["colour"]]}))
            for sent in ref["sentences"]:
                assert own & set(sent["tokens"]), (name, sent["sent"], attrs)
    pool_attrs = {v for a in datasets["synthref_pool"].anns.values()
                  for v in (a["attributes"]["shape"], a["attributes"]["colour"])}
    assert held <= pool_attrs  # the pool holds every concept


def test_synthref_plus_has_no_absolute_location_words(datasets):
    for ref in datasets["synthref+"].refs:
        for sent in ref["sentences"]:
            assert not ABSOLUTE_LOCATION_WORDS & set(sent["tokens"]), sent["sent"]
    # while synthref does use them (the difference between the two styles is real)
    used = {t for r in datasets["synthref"].refs for s in r["sentences"] for t in s["tokens"]}
    assert ABSOLUTE_LOCATION_WORDS & used


def test_test_splits_follow_shape_families(datasets):
    for name in ("synthref", "synthref+"):
        ds = datasets[name]
        for split, family in (("testA", CURVED_SHAPES), ("testB", ANGULAR_SHAPES)):
            shapes = {ds.anns[r["ann_id"]]["attributes"]["shape"] for r in ds.refs_in_split(split)}
            assert shapes and shapes <= set(family), (name, split, shapes)
    g_shapes = {datasets["synthrefg"].anns[r["ann_id"]]["attributes"]["shape"]
                for r in datasets["synthrefg"].refs_in_split("test")}
    assert g_shapes & set(CURVED_SHAPES) and g_shapes & set(ANGULAR_SHAPES)


def test_synthrefg_is_longer(datasets):
    def mean_len(name):
        return np.mean([len(s["tokens"]) for r in datasets[name].refs for s in r["sentences"]])
    assert mean_len("synthrefg") > mean_len("synthref") + 1.5


def test_pool_has_no_text_and_one_ref_per_object(datasets):
    pool = datasets["synthref_pool"]
    assert all(r["sentences"] == [] and r["sent_ids"] == [] and r["split"] == "train" for r in pool.refs)
    assert sorted(r["ann_id"] for r in pool.refs) == sorted(pool.anns)
    assert len(pool.images) == TINY["pool_images"]
    assert all(img["file_name"].startswith("pool_") for img in pool.images.values())


# ------------------------------------------------------------------------------------------------ determinism, cache
def test_same_seed_gives_identical_files_and_other_seed_differs(built, tmp_path):
    again = build_synthref(tmp_path / "again", seed=0, progress=False, workers=2, **TINY)  # workers do not matter
    assert tree_hashes(again) == tree_hashes(built)
    other = build_synthref(tmp_path / "other", seed=1, progress=False, **TINY)
    a, b = tree_hashes(built), tree_hashes(other)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a) > len(a) // 2


def test_ensure_synthref_caches_by_config_and_rebuilds_partial(tmp_path):
    cfg = {"num_images": 12, "pool_images": 3}
    path = ensure_synthref(tmp_path, cfg, progress=False)
    assert path.parent == tmp_path and (path / BUILD_MARKER).is_file()
    assert read_build_info(path)["cache_key"] == path.name == SynthRefConfig.from_any(cfg).cache_key()
    stamp = (path / BUILD_MARKER).stat().st_mtime_ns
    probe = path / "untouched"
    probe.write_text("x")
    assert ensure_synthref(tmp_path, cfg, progress=False) == path
    assert probe.exists() and (path / BUILD_MARKER).stat().st_mtime_ns == stamp  # reused, not rebuilt
    other = ensure_synthref(tmp_path, {**cfg, "scene": {"max_objects": 4}}, progress=False)
    assert other != path  # any generation parameter changes the key
    (path / BUILD_MARKER).unlink()  # simulate a build killed before its marker
    assert ensure_synthref(tmp_path, cfg, progress=False) == path
    assert not probe.exists() and (path / BUILD_MARKER).is_file()
    ReferDataset(path, "synthref")


def test_yaml_defaults_equal_library_defaults():
    """`make_synthref.py cached=true` and `ensure_synthref(root)` must share one cache entry."""
    from omegaconf import OmegaConf
    raw = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "synthref.yaml"))
    raw = {k: v for k, v in raw.items() if k not in ("defaults", "hydra")}
    assert SynthRefConfig.from_cli(raw) == SynthRefConfig()
    assert SynthRefConfig.from_cli(raw).cache_key() == SynthRefConfig().cache_key()


def test_bad_config_and_unwritable_root(tmp_path):
    with pytest.raises(KeyError, match="bogus"):
        SynthRefConfig.from_any({"bogus": 1})
    with pytest.raises(KeyError, match="radius_px"):
        SynthRefConfig.from_any({"scene": {"radius_px": 3}})
    with pytest.raises(ValueError, match="held-out shape"):
        SynthRefConfig.from_any({"held_out_shapes": ["dodecahedron"]})
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SynthRefError, match="not writable"):
        build_synthref(blocker / "sub", num_images=2, pool_images=0, progress=False)


# ------------------------------------------------------------------------------------------------ CLI, preview
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "make_synthref.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_builds_and_prints_summary(tmp_path):
    res = _cli(f"root={tmp_path / 'out'}", "seed=3", "num_images=20", "pool_images=4", "progress=false",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "synthref+" in res.stdout and "sentences" in res.stdout and "unseen" in res.stdout
    assert ReferDataset(tmp_path / "out", "synthrefg").refs
    assert read_build_info(tmp_path / "out")["config"]["seed"] == 3


def test_cli_rejects_unknown_key(tmp_path):
    res = _cli("num_imagez=3", cwd=tmp_path)
    assert res.returncode != 0
    assert "num_imagez" in res.stderr and "Could not override" in res.stderr


def test_preview_png(tmp_path):
    out = save_preview(tmp_path / "prev.png", SynthRefConfig(), count=4)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 3 * 128 and img.height > 2 * 128


def test_vocab_covers_every_generated_word(datasets):
    from pseudo_ris.synthref.vocab import all_words
    words = set(all_words())
    for name in ("synthref", "synthref+", "synthrefg"):
        used = {t for r in datasets[name].refs for s in r["sentences"] for t in s["tokens"]}
        assert used <= words, sorted(used - words)
