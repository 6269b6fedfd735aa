"""Spatial phrases: added only when they single out the mask among the image's masks with the same noun."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pseudo_ris.filtering.spatial_phrases import (SpatialConfig, apply_phrase, distinguishing_phrases,
                                                  majority_nouns, propose)

ON = SpatialConfig(enabled=True)


def _box(x, y, w, h):
    return [float(x), float(y), float(w), float(h)]


def test_left_and_right_of_two_same_noun_masks():
    boxes = [_box(10, 40, 20, 20), _box(70, 40, 20, 20)]  # centres x = 20 and 80 in a 100 px image
    assert distinguishing_phrases(0, [0, 1], boxes, [400, 400], 100, 100, ON) == [("location", "on the left")]
    assert distinguishing_phrases(1, [0, 1], boxes, [400, 400], 100, 100, ON) == [("location", "on the right")]


def test_no_phrase_when_the_noun_alone_refers():
    boxes = [_box(10, 40, 20, 20)]
    assert distinguishing_phrases(0, [0], boxes, [400], 100, 100, ON) == []


def test_no_location_inside_the_margin():
    # centres 3 px apart on a 100 px image: less than the 5 % margin, so neither is "on the left"
    boxes = [_box(40, 10, 20, 20), _box(43, 70, 20, 20)]
    phrases = distinguishing_phrases(0, [0, 1], boxes, [400, 400], 100, 100, ON)
    assert ("location", "on the left") not in phrases and ("location", "at the top") in phrases


def test_middle_of_three_gets_no_horizontal_phrase():
    boxes = [_box(5, 40, 10, 10), _box(45, 40, 10, 10), _box(85, 40, 10, 10)]
    assert distinguishing_phrases(1, [0, 1, 2], boxes, [100, 100, 100], 100, 100, ON) == []
    assert distinguishing_phrases(0, [0, 1, 2], boxes, [100, 100, 100], 100, 100, ON) == [
        ("location", "on the left")]


def test_sizes_comparative_and_superlative():
    boxes = [_box(40, 40, 10, 10)] * 3
    cfg = SpatialConfig(enabled=True, location=False)
    assert distinguishing_phrases(0, [0, 1], boxes, [300, 100, 100], 100, 100, cfg) == [("size", "bigger")]
    assert distinguishing_phrases(0, [0, 1, 2], boxes, [300, 100, 190], 100, 100, cfg) == [("size", "biggest")]
    assert distinguishing_phrases(1, [0, 1], boxes, [300, 100, 100], 100, 100, cfg) == [("size", "smaller")]
    # 300 vs 210: ratio 1.43 < 1.5, not clearly bigger
    assert distinguishing_phrases(0, [0, 2], boxes, [300, 100, 210], 100, 100, cfg) == []


def test_apply_phrase_forms_and_refuses_duplicates():
    assert apply_phrase("a red circle", "location", "on the left") == "the red circle on the left"
    assert apply_phrase("an orange square", "size", "bigger") == "the bigger orange square"
    assert apply_phrase("a cyan cross in the picture", "location", "on the right") == "the cyan cross on the right"
    assert apply_phrase("a small circle", "size", "smaller") is None
    assert apply_phrase("the circle on the right", "location", "on the left") is None
    assert apply_phrase("a", "size", "bigger") is None


def test_majority_nouns_ties_are_stable():
    assert majority_nouns([0, 0, 0, 1, 1], ["circle", "square", "circle", "star", "heart"]) == {0: "circle",
                                                                                             1: "heart"}


def test_propose_uses_only_same_noun_masks_and_best_captions():
    rows = [{"mask_index": 0, "text": "a red circle", "doc": 2.0},
            {"mask_index": 0, "text": "a circle", "doc": 0.5},
            {"mask_index": 0, "text": "a shape", "doc": 0.1},
            {"mask_index": 1, "text": "a blue circle", "doc": 3.0},
            {"mask_index": 2, "text": "a green square", "doc": 4.0}]
    heads = ["circle", "circle", "shape", "circle", "square"]
    boxes = [_box(5, 40, 10, 10), _box(80, 40, 10, 10), _box(40, 5, 10, 10)]
    cfg = SpatialConfig(enabled=True, size=False, max_texts_per_mask=2)
    got = {(p.mask_index, p.text) for p in propose(rows, heads, boxes, [100, 100, 100], 100, 100, cfg)}
    # the square is alone with its noun (no phrase although it is the topmost mask); the circles get left / right;
    # mask 0's third caption ("a shape", lowest DoC) is beyond max_texts_per_mask
    assert got == {(0, "the red circle on the left"), (0, "the circle on the left"),
                   (1, "the blue circle on the right")}
    assert propose(rows, heads, boxes, [100, 100, 100], 100, 100, SpatialConfig(enabled=False)) == []


def test_config_rejects_meaningless_values():
    for bad in ({"margin": -0.1}, {"size_ratio": 1.0}, {"max_texts_per_mask": 0}):
        with pytest.raises(ValueError, match="spatial"):
            SpatialConfig(**bad)


class _ShapeColourScorer:
    """A transparent 'CLIP' on hand-made scenes: images and texts embed as (red, blue, left-ness)."""

    image_size = 32

    def image_features(self, views):
        rgb = views.mean(dim=(2, 3))
        return torch.nn.functional.normalize(torch.stack([rgb[:, 0], rgb[:, 2], rgb[:, 1]], dim=-1), dim=-1)

    def text_features(self, texts):
        vecs = [(1.0 if "red" in t else 0.1, 1.0 if "blue" in t else 0.1, 0.2) for t in texts]
        return torch.nn.functional.normalize(torch.tensor(vecs), dim=-1)

    def logits(self, a, b):
        return 10.0 * a @ b.T


class _Captioner:
    image_size, mean = 24, (0.5, 0.5, 0.5)

    def __call__(self, views, seed):
        return [[SimpleNamespace(text="a red circle", view=3, setting="beam")] for _ in range(len(views))]


def _scene():
    img = np.full((40, 100, 3), 128, np.uint8)
    masks = [np.zeros((40, 100), bool) for _ in range(3)]
    masks[0][10:30, 5:25] = True    # left circle
    masks[1][10:30, 40:60] = True   # middle circle
    masks[2][10:30, 75:95] = True   # right circle
    for m in masks:
        img[m] = (255, 0, 0)
    return img, masks


@pytest.mark.parametrize("enabled", [False, True])
def test_pipeline_adds_scored_spatial_candidates_only_when_enabled(enabled):
    from pseudo_ris.filtering import RuleNounExtractor
    from pseudo_ris.generation import ImageItem, PseudoLabelPipeline
    from pseudo_ris.masks import ObjectMask

    img, masks = _scene()
    pipe = PseudoLabelPipeline(lambda image, image_id=None, file_name=None: [ObjectMask(m) for m in masks],
                               _Captioner(), _ShapeColourScorer(), RuleNounExtractor(), score_transform="logit",
                               spatial=SpatialConfig(enabled=enabled, size=False))
    _, rows = pipe.process(img, ImageItem(1, "x.png", Path("x.png")))
    spatial = [r for r in rows if r["setting"].startswith("spatial")]
    if not enabled:
        assert spatial == [] and len(rows) == 3
        return
    # three identical red circles: the left one and the right one get a phrase, the middle one none
    assert {(r["mask_index"], r["text"]) for r in spatial} == {(0, "the red circle on the left"),
                                                                (2, "the red circle on the right")}
    assert [r["cand_index"] for r in rows] == list(range(len(rows)))
    for r in spatial:  # scored against every mask like any candidate, so the DoC filter decides
        assert len(r["M_all"]) == 3 and len(r["C_all"]) == 3 and r["doc"] is not None
        assert r["view"] == 3 and r["distinctive"] is False


def test_stores_without_spatial_phrases_keep_their_identity():
    """Turning the step off must leave a store's run identity as before the step existed (caches stay resumable);
    turning it on makes it a different store."""
    from pseudo_ris.generation.runner import run_meta

    source = SimpleNamespace(description="pool", image_dir=".")
    base = {"generator": {"captioner": {}, "scorer": {}}, "masks": "sam", "filter": {}}
    off = run_meta({**base, "spatial": {"enabled": False, "margin": 0.05}}, source)
    assert "spatial" not in off and off == run_meta(base, source)
    assert run_meta({**base, "spatial": {"enabled": True, "margin": 0.05}}, source)["spatial"]["enabled"] is True


def test_reproduction_has_a_spatial_store_and_row(tmp_path):
    from ris_models.reproduction import ROWS
    from ris_models.reproduction.plan import STORES

    assert ROWS["full_spatial"].store == "sam_spatial" and "spatial.enabled=true" in STORES["sam_spatial"]
    assert ROWS["full"].store == "sam" and not any("spatial" in o for o in STORES["sam"])
