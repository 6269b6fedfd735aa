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
    assert set(state) == set(fresh) and any(not torch.equal(state[k], fresh[k]) for k in state)
    model = build_model("cris_tiny", pretrained=str(few_step_weights))
    conv = model.image_encoder.visual.conv1.weight if hasattr(model.image_encoder.visual, "conv1") else None
    assert conv is not None and torch.equal(conv, state["visual.conv1.weight"])
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
