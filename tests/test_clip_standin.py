"""The SynthRef CLIP stand-in: trains, and its file loads where OpenAI CLIP would (tiny CRIS, DoC scorer)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def few_step_weights(tmp_path_factory):
    from pseudo_ris.foundation.clip_training import train_clip

    out = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    return train_clip(out_dir=out, progress=False, steps=50, stop_after=2, batch_size=8, checkpoint_every=1)


def test_batches_are_a_pure_function_of_the_step_and_positives_follow_the_captions():
    from pseudo_ris.foundation.clip_training import clip_batch
    from pseudo_ris.foundation.config import ClipTrainConfig, GenericCaptionConfig

    cfg = ClipTrainConfig(batch_size=12, scene_prob=0.5)
    a = clip_batch(3, cfg, 64, GenericCaptionConfig())
    b = clip_batch(3, cfg, 64, GenericCaptionConfig())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
    images, texts, positives = a
    assert images.shape == (12, 3, 64, 64) and positives.shape == (12, 12)
    assert bool(positives.diagonal().all())  # each image's own caption states nothing false about it
    assert not bool(positives.all())  # and some captions are wrong for some images


def test_trained_file_loads_into_tiny_cris_and_as_a_scorer(few_step_weights):
    import open_clip

    from pseudo_ris.filtering.scorer import ClipScorer
    from pseudo_ris.foundation.clip_training import build_clip
    from ris_models.registry import build_model

    state = torch.load(few_step_weights, map_location="cpu", weights_only=True)
    fresh = build_clip().state_dict()
    assert set(state) == set(fresh) and any(not torch.equal(state[k].float(), fresh[k].float()) for k in state)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())  # half: a small file
    model = build_model("cris_tiny", pretrained=str(few_step_weights))
    conv = model.image_encoder.visual.conv1.weight if hasattr(model.image_encoder.visual, "conv1") else None
    assert conv is not None and conv.dtype == torch.float32 and torch.equal(conv, state["visual.conv1.weight"].float())
    scorer = ClipScorer.from_open_clip("clip_synthref", few_step_weights)
    views = torch.rand(3, 3, 128, 128)
    logits = scorer.logits(scorer.image_features(views), scorer.text_features(["a red circle", "a blue star"]))
    assert logits.shape == (3, 2) and torch.isfinite(logits).all() and logits.std() > 0
    assert open_clip.get_tokenizer("clip_synthref")(["a"]).shape[1] == 17  # CRIS's RefCOCO length


def test_evaluation_reports_rates(few_step_weights):
    from pseudo_ris.foundation.clip_training import evaluate_clip

    report = evaluate_clip(few_step_weights, num_images=3)
    assert report["objects"] >= 3 and 0.0 <= report["zeroshot_shape_acc"] <= 1.0
    assert -1.0 <= report["cosine_min"] <= 1.0


def _disc(h=40, w=40, cy=20, cx=20, r=9):
    import numpy as np

    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_sam_like_masks_are_imperfect_but_keep_most_of_the_object():
    import numpy as np

    from pseudo_ris.foundation.data import sam_like_mask

    mask = _disc()
    rng = np.random.default_rng(0)
    outs = [sam_like_mask(mask, rng) for _ in range(60)]
    changed = [o for o in outs if not np.array_equal(o, mask)]
    assert len(changed) >= 45  # almost always an error ...
    for o in outs:  # ... never one that loses most of the object
        assert o.shape == mask.shape and (o & mask).sum() >= 0.4 * mask.sum()
    grown = [o for o in changed if (o & ~mask).any()]
    shrunk = [o for o in changed if (mask & ~o).any()]
    assert grown and shrunk  # both too-loose and too-tight errors occur


def test_sam_like_crops_only_when_asked_and_zero_keeps_old_batches():
    import numpy as np

    from pseudo_ris.foundation.config import GenericCaptionConfig
    from pseudo_ris.foundation.data import coca_batch, scene_at

    def batch(prob):
        rng = np.random.default_rng(7)
        scenes = (scene_at("test", 0, i) for i in range(20))
        return coca_batch(scenes, rng, 32, 8, 2, GenericCaptionConfig(), 0.3, sam_like_prob=prob)

    plain, default, noisy = batch(0.0), None, batch(1.0)
    rng = np.random.default_rng(7)
    default = coca_batch((scene_at("test", 0, i) for i in range(20)), rng, 32, 8, 2, GenericCaptionConfig(), 0.3)
    assert torch.equal(plain.images, default.images) and plain.captions == default.captions
    assert not torch.equal(plain.images, noisy.images)


def test_command_line_trains_and_reports(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "tools" / "train_foundation.py"), "model=clip", "steps=2",
           f"out={tmp_path / 'cli'}", "clip.batch_size=4", "eval.clip.num_images=2", "progress=false",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "cli" / "recipe.json").read_text())["runs"][-1]["steps_done"] == 2
    assert "zeroshot_shape_acc" in json.loads((tmp_path / "cli" / "quality.json").read_text())["summary"]
    bad = subprocess.run(cmd[:2] + ["model=clipz", f"hydra.run.dir={tmp_path / 'h2'}"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "clipz" in bad.stderr and "is not one of" in bad.stderr and "Traceback" not in bad.stderr


def test_tiny_cris_starts_from_the_shipped_standin_unless_told_otherwise():
    from pseudo_ris.foundation.registry import shipped_paths
    from ris_models.registry import ModelConfigError, build_model, check_weight_sources

    shipped = torch.load(shipped_paths()["clip"], map_location="cpu", weights_only=True)
    default = build_model("cris_tiny")  # model.pretrained defaults to true for the tiny CRIS
    visual, text = default.image_encoder.visual, default.text_encoder
    assert torch.equal(visual.conv1.weight, shipped["visual.conv1.weight"].float())
    assert torch.equal(visual.layer4[0].conv3.weight, shipped["visual.layer4.0.conv3.weight"].float())
    token = next(p for n, p in text.named_parameters() if n.endswith("token_embedding.weight"))
    assert torch.equal(token, shipped["token_embedding.weight"].float())
    scratch = build_model("cris_tiny", pretrained=False)
    assert not torch.equal(scratch.image_encoder.visual.conv1.weight, visual.conv1.weight)
    rebuilt = build_model(**default.config, load_pretrained=False)  # a checkpoint's rebuild reads no weights
    assert not torch.equal(rebuilt.image_encoder.visual.conv1.weight, visual.conv1.weight)
    # the stand-in fits the tiny encoders only: other shapes are refused by name, before and at build time
    with pytest.raises(ModelConfigError, match="cris_tiny"):
        check_weight_sources("cris_r50", pretrained=True)
    check_weight_sources("cris_tiny", pretrained=True)
    wider = {"embed_dim": 128, "vision_cfg": {"image_size": 128, "layers": [1, 1, 1, 1], "width": 32},
             "text_cfg": {"context_length": 17, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}
    with pytest.raises(ModelConfigError, match="fits the cris_tiny architecture only"):
        build_model("cris_tiny", clip_overrides=wider, fpn_in=(256, 512, 128))


def test_zero_shot_ranker_loads_the_shipped_standin_when_it_is_the_scorer():
    """``generator/scorer=clip_synthref`` names the shipped file as ``pretrained: shipped``: the zero-shot row must
    rank with those weights, the same ones the generator's DoC filter loads."""
    from pseudo_ris.foundation.registry import shipped_paths
    from ris_models.reproduction.plan import compose
    from ris_models.zero_shot import build_zero_shot

    gen_cfg = compose("generate", ["generator/scorer=clip_synthref", "masks=sam", "sam.checkpoint=shipped"])
    model = build_zero_shot(gen_cfg).scorer.model
    shipped = torch.load(shipped_paths()["clip"], map_location="cpu", weights_only=True)
    assert torch.equal(model.visual.conv1.weight, shipped["visual.conv1.weight"].float())
    assert torch.equal(model.token_embedding.weight, shipped["token_embedding.weight"].float())
