"""SynthRef foundation models: training loops, resume, generic captions, shipped weights (pseudo_ris.foundation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pseudo_ris.foundation import (CocaTrainConfig, GenericCaptionConfig, SamTrainConfig, ensure_foundation_models,
                                   train_coca, train_sam)
from pseudo_ris.foundation.config import FoundationConfigError, config_dict, config_hash, make_config
from pseudo_ris.foundation.data import (caption_vocabulary, coca_batch, compatible, generic_caption, prompt_text,
                                        sam_image_batch, scene_at)
from pseudo_ris.foundation.coca_training import synthref_tokenizer
from pseudo_ris.foundation.loop import ResumeMismatchError
from pseudo_ris.synthref.vocab import (ABSOLUTE_LOCATION_WORDS, COLOURS, RELATION_PHRASES, SHAPES, SIZE_SYNONYMS,
                                       SIZES)

ROOT = Path(__file__).resolve().parents[1]

# tiny recipes: a few steps of the real loops in seconds
SAM_FAST = dict(steps=3, batch_images=2, prompts_per_image=3, warmup_steps=1, checkpoint_every=1)
COCA_FAST = dict(steps=3, batch_size=8, objects_per_scene=2, warmup_steps=1, checkpoint_every=1, sam_bank_share=0.0,
                 init={})


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- generic captions ------------------------------------------------------------------------------------------------

def _distinctive_words() -> set[str]:
    words = set(ABSOLUTE_LOCATION_WORDS)
    for phrases in RELATION_PHRASES.values():
        for phrase in phrases:
            words.update(phrase.split())
    # comparatives/superlatives single an object out relative to others; plain "small"/"big" are attributes
    words.update(w for ws in SIZE_SYNONYMS.values() for w in ws if w.endswith(("er", "est")))
    return words - {"a", "an", "the", "of", "to", "on", "in"}  # function words inside phrases are not cues alone


def test_generic_captions_never_use_distinctive_words_and_state_the_truth():
    rng = np.random.default_rng(0)
    banned = _distinctive_words()
    assert {"left", "right", "above", "below", "next", "beside", "biggest", "smaller"} <= banned
    vocab = set(caption_vocabulary())
    for _ in range(3000):
        shape, colour, size = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))], \
            SIZES[rng.integers(2)]
        caption, stated = generic_caption(shape, colour, size, rng)
        words = caption.split()
        assert not banned & set(words), caption
        assert set(words) <= vocab, caption
        assert shape in words and stated["shape"] == shape
        assert (colour in words) == ("colour" in stated) and (size in words) == ("size" in stated)
        assert set(prompt_text(stated).split()) <= vocab


def test_generic_caption_attribute_rates_are_independent_of_each_other():
    rng = np.random.default_rng(1)
    cfg = GenericCaptionConfig()
    stated = [generic_caption("circle", "red", "big", rng, cfg)[1] for _ in range(4000)]
    size = np.array(["size" in s for s in stated])
    colour = np.array(["colour" in s for s in stated])
    assert abs(size.mean() - cfg.size_prob) < 0.03 and abs(colour.mean() - cfg.colour_prob) < 0.03
    assert abs((size & colour).mean() - cfg.size_prob * cfg.colour_prob) < 0.03


def test_caption_articles_agree():
    rng = np.random.default_rng(2)
    cfg = GenericCaptionConfig(size_prob=0.0, colour_prob=1.0, templates={"{a} {np}": 1.0})
    assert generic_caption("circle", "orange", "big", rng, cfg)[0] == "an orange circle"
    assert generic_caption("circle", "red", "big", rng, cfg)[0] == "a red circle"


def test_compatibility_is_what_the_text_states():
    objs = [{"shape": "circle", "colour": "red", "size": "big"}, {"shape": "circle", "colour": "blue", "size": "big"}]
    stated = [{"shape": "circle"}, {"shape": "circle", "colour": "red"}, {"shape": "star"}]
    assert compatible(stated, objs).tolist() == [[True, True, False], [True, False, False]]


# --- data streams ----------------------------------------------------------------------------------------------------

def test_scene_streams_are_deterministic_and_disjoint():
    a, b = scene_at("sam_train", 0, 5), scene_at("sam_train", 0, 5)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, scene_at("sam_eval", 0, 5).image)
    assert not np.array_equal(a.image, scene_at("sam_train", 1, 5).image)


def test_sam_prompts_hit_their_targets():
    scene = scene_at("test", 0, 0)
    rng = np.random.default_rng(0)
    batch = sam_image_batch(scene, rng, 128, 40, background_prob=0.3, box_prob=0.2, box_jitter=0.0)
    assert len(batch.points) + len(batch.boxes) == 40
    for (x, y), target in zip(batch.points[:, 0].tolist(), batch.point_targets):
        assert target.sum() == 0 or target[int(y), int(x)] == 1  # the click lies on its own target
    assert (batch.point_targets.flatten(1).sum(1) == 0).any()  # some background clicks
    for box, target in zip(batch.boxes.tolist(), batch.box_targets):
        ys, xs = torch.nonzero(target, as_tuple=True)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1


def test_coca_batch_uses_generator_views():
    rng = np.random.default_rng(0)
    scenes = (scene_at("test", 0, i) for i in range(50))
    batch = coca_batch(scenes, rng, 64, 12, 2, GenericCaptionConfig(), prompt_prob=0.5)
    assert batch.images.shape == (12, 3, 64, 64) and 0 <= batch.images.min() and batch.images.max() <= 1
    assert set(batch.views) <= {0, 1, 2, 3}
    assert any(t.startswith("a photo of") for t in batch.texts)


# --- losses ----------------------------------------------------------------------------------------------------------

def test_balanced_bce_gives_objects_half_the_weight():
    from pseudo_ris.foundation.sam_training import bce_loss

    target = torch.zeros(1, 8, 8)
    target[0, :2, :2] = 1
    pos_wrong = torch.where(target > 0, -3.0, -3.0)  # objects missed, background right
    neg_wrong = torch.where(target > 0, 3.0, 3.0)    # objects right, background wrong
    assert torch.allclose(bce_loss(pos_wrong, target, True), bce_loss(neg_wrong, target, True), atol=1e-5)
    assert bce_loss(pos_wrong, target, False) < bce_loss(neg_wrong, target, False)  # plain BCE favours background


def test_multi_positive_contrastive_prefers_compatible_pairs():
    from pseudo_ris.foundation.coca_training import multi_positive_contrastive

    img = torch.nn.functional.normalize(torch.eye(3), dim=-1)
    pos = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    aligned = multi_positive_contrastive(img, img, torch.tensor(10.0), pos)
    shuffled = multi_positive_contrastive(img, img[[2, 0, 1]], torch.tensor(10.0), pos)
    assert aligned < shuffled


# --- training loops --------------------------------------------------------------------------------------------------

def test_sam_loss_decreases_on_a_fixed_batch():
    from pseudo_ris.foundation.sam_training import sam_step_loss
    from pseudo_ris.masks.sam import build_sam

    torch.manual_seed(0)
    sam = build_sam("tiny").train()
    rng = np.random.default_rng(0)
    batches = [sam_image_batch(scene_at("test", 0, i), rng, 128, 4, 0.15, 0.25, 0.1) for i in range(2)]
    opt = torch.optim.AdamW(sam.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = sam_step_loss(sam, batches, balanced=True, iou_loss_weight=1.0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_train_sam_reloads_and_resumes(tmp_path):
    from pseudo_ris.masks.sam import build_sam

    out = tmp_path / "sam"
    path = train_sam(dict(SAM_FAST, stop_after=2), out_dir=out, progress=False)
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 2
    path = train_sam(SAM_FAST, out_dir=out, progress=False)  # same recipe: continues at step 2
    record = json.loads((out / "recipe.json").read_text())
    assert [r["resumed_from"] for r in record["runs"]] == [0, 2] and record["runs"][-1]["steps_done"] == 3
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 3
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["loss"]) for row in logged)
    sam = build_sam("tiny", checkpoint=path)
    trained = dict(sam.named_parameters())
    fresh = dict(build_sam("tiny").named_parameters())
    assert any(not torch.equal(trained[k], fresh[k]) for k in trained)
    with pytest.raises(ResumeMismatchError):
        train_sam(dict(SAM_FAST, lr=1e-2), out_dir=out, progress=False)


def test_train_coca_reloads_into_open_clip(tmp_path):
    from pseudo_ris.captioning.coca import load_coca

    path = train_coca(COCA_FAST, out_dir=tmp_path / "coca", progress=False)
    logged = [json.loads(line) for line in (tmp_path / "coca" / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["caption"]) and np.isfinite(row["contrastive"]) for row in logged)
    bundle = load_coca(CocaTrainConfig().arch, pretrained=path)
    assert bundle.tokenizer.vocab_size == len(caption_vocabulary()) + 4
    pixels = bundle.preprocess(torch.rand(2, 3, bundle.image_size, bundle.image_size))
    out = bundle.model(pixels, bundle.tokenizer.encode(["a red circle", "a star"]))
    assert torch.isfinite(out["logits"]).all() and out["logits"].std() > 0


def test_coca_fine_tune_trains_its_parent_once_and_continues_its_scene_stream(tmp_path, monkeypatch):
    """``init``: the parent recipe is trained first (into init-<hash>), reused afterwards; the fine-tune starts
    from the parent's weights and draws the scenes after the parent's last step."""
    import pseudo_ris.foundation.coca_training as coca_training
    from pseudo_ris.captioning.coca import load_coca

    parent = dict(COCA_FAST, steps=2)
    child = dict(COCA_FAST, steps=1, lr=1e-9, warmup_steps=0, sam_like_prob=0.5, init=parent)
    seen: list[int] = []
    real_scene_at = coca_training.scene_at
    monkeypatch.setattr(coca_training, "scene_at",
                        lambda stream, seed, index, cfg=None: seen.append(index) or real_scene_at(stream, seed, index,
                                                                                                   cfg))
    path = train_coca(child, out_dir=tmp_path / "ft", progress=False)
    parent_dir = tmp_path / "ft" / f"init-{config_hash(make_config(CocaTrainConfig, parent))}"
    parent_weights = parent_dir / "coca_tiny.pt"
    assert parent_weights.is_file()
    assert seen[0] == 0 and 2000 in seen  # parent steps 0, 1, then the child's step 0 = stream step 2
    stamp = parent_weights.stat().st_mtime_ns
    # lr 1e-9: one step barely moves the weights, so the child must be the parent's weights (not a fresh init)
    got = load_coca("coca_tiny", pretrained=path).model.state_dict()
    want = load_coca("coca_tiny", pretrained=parent_weights).model.state_dict()
    fresh = load_coca("coca_tiny", tokenizer=synthref_tokenizer()).model.state_dict()
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)
    assert any(not torch.allclose(want[k], fresh[k], atol=1e-3) for k in want)
    other = tmp_path / "ft3"
    (other / parent_dir.name).mkdir(parents=True)
    for f in parent_dir.iterdir():  # a finished parent run is reused, not retrained
        if f.is_file():
            (other / parent_dir.name / f.name).write_bytes(f.read_bytes())
    seen.clear()
    train_coca(child, out_dir=other, progress=False)
    assert min(seen) == 2000  # only the child's scenes were drawn
    assert parent_weights.stat().st_mtime_ns == stamp
    with pytest.raises(FoundationConfigError, match="init.arch"):
        train_coca(dict(child, init=dict(parent, arch="other")), out_dir=tmp_path / "bad", progress=False)


def test_coca_loss_decreases_on_a_fixed_batch():
    from pseudo_ris.captioning.coca import load_coca
    from pseudo_ris.foundation.coca_training import coca_step_loss, synthref_tokenizer

    torch.manual_seed(0)
    bundle = load_coca("coca_tiny", tokenizer=synthref_tokenizer())
    bundle.model.train()
    rng = np.random.default_rng(0)
    batch = coca_batch((scene_at("test", 0, i) for i in range(50)), rng, bundle.image_size, 8, 2,
                       GenericCaptionConfig(), 0.3)
    pos = compatible(batch.stated, batch.objects)
    opt = torch.optim.AdamW(bundle.model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = coca_step_loss(bundle, batch.images, batch.captions, batch.texts, pos, 1.0, 1.0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


# --- configs and the command line ------------------------------------------------------------------------------------

def test_yaml_mirrors_dataclass_defaults():
    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "foundation.yaml"), resolve=True)
    assert conf["sam"] == config_dict(SamTrainConfig())
    assert conf["coca"] == config_dict(CocaTrainConfig())
    from pseudo_ris.foundation.config import ClipTrainConfig

    assert conf["clip"] == config_dict(ClipTrainConfig())


def test_config_rejects_unknown_keys_and_hash_ignores_bookkeeping():
    with pytest.raises(FoundationConfigError, match="lrr"):
        make_config(SamTrainConfig, {"lrr": 1})
    base = SamTrainConfig()
    assert config_hash(base) == config_hash(make_config(SamTrainConfig, base, checkpoint_every=7, stop_after=3))
    assert config_hash(base) != config_hash(make_config(SamTrainConfig, base, seed=1))


def test_command_line_runs_a_few_steps(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "train_foundation.py"), "model=sam", "steps=2", "seed=3",
           f"out={tmp_path / 'cli'}", "sam.batch_images=2", "sam.prompts_per_image=2", "evaluate=false",
           "progress=false", f"hydra.run.dir={tmp_path / 'hydra'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads((tmp_path / "cli" / "recipe.json").read_text())
    assert record["config"]["seed"] == 3 and record["runs"][-1]["steps_done"] == 2
    assert (tmp_path / "cli" / "sam_tiny.pt").is_file()


# --- shipped weights -------------------------------------------------------------------------------------------------

def test_shipped_weights_load_and_are_small():
    from pseudo_ris.captioning.coca import load_coca
    from pseudo_ris.masks.sam import build_sam

    paths = ensure_foundation_models(ROOT / ".cache-unused", retrain=False)
    assert set(paths) == {"sam", "coca", "clip"}
    assert set(ensure_foundation_models(ROOT / ".cache-unused", kinds=("sam", "coca"))) == {"sam", "coca"}
    for path in paths.values():
        assert path.is_file() and path.stat().st_size < 10 * 2 ** 20
        assert "assets" in path.parts  # inside the package
    sam = build_sam("tiny", checkpoint=paths["sam"])
    assert sum(p.numel() for p in sam.parameters()) > 0
    bundle = load_coca(CocaTrainConfig().arch, pretrained=paths["coca"])
    logits = bundle.model(bundle.preprocess(torch.rand(1, 3, bundle.image_size, bundle.image_size)),
                          bundle.tokenizer.encode(["a circle"]))["logits"]
    assert torch.isfinite(logits).all() and logits.std() > 0
    assert not (ROOT / ".cache-unused").exists()  # nothing trained without retrain=True


def test_shipped_recipes_are_the_current_defaults():
    """retrain=True must reproduce the shipped recipe; a changed default needs new shipped weights."""
    from pseudo_ris.foundation.registry import shipped_recipe

    from pseudo_ris.foundation.config import ClipTrainConfig

    for kind, cls in (("sam", SamTrainConfig), ("coca", CocaTrainConfig), ("clip", ClipTrainConfig)):
        recipe = shipped_recipe(kind)
        assert recipe, f"{kind}_recipe.json missing next to the shipped weights"
        assert config_hash(make_config(cls, recipe)) == config_hash(cls())


def test_ensure_retrain_caches_by_recipe(tmp_path, monkeypatch):
    import pseudo_ris.foundation as foundation

    calls = []

    def fake_train(kind):
        def train(cfg, out_dir, progress=True):
            calls.append(kind)
            out_dir.mkdir(parents=True)
            (out_dir / "w.pt").write_bytes(b"x")
            (out_dir / "recipe.json").write_text(json.dumps(
                {"weights": "w.pt", "runs": [{"steps_done": cfg.steps, "schedule_steps": cfg.steps}]}))
            return out_dir / "w.pt"
        return train

    monkeypatch.setattr(foundation, "train_sam", fake_train("sam"))
    monkeypatch.setattr(foundation, "train_coca", fake_train("coca"))
    monkeypatch.setattr(foundation, "train_clip", fake_train("clip"))
    first = ensure_foundation_models(tmp_path, retrain=True, sam=SAM_FAST, coca=COCA_FAST, clip={"steps": 3})
    again = ensure_foundation_models(tmp_path, retrain=True, sam=SAM_FAST, coca=COCA_FAST, clip={"steps": 3})
    assert first == again and calls == ["sam", "coca", "clip"]  # the second call reuses the finished runs
    other = ensure_foundation_models(tmp_path, retrain=True, sam=dict(SAM_FAST, seed=5), coca=COCA_FAST,
                                     clip={"steps": 3})
    assert other["sam"] != first["sam"] and calls == ["sam", "coca", "clip", "sam"]
    only = ensure_foundation_models(tmp_path, retrain=True, kinds=("coca",), coca=dict(COCA_FAST, seed=7))
    assert set(only) == {"coca"} and calls[-1] == "coca" and len(calls) == 5


def test_a_run_its_recipe_exports_part_way_counts_as_finished(tmp_path):
    from pseudo_ris.foundation.registry import finished_weights

    (tmp_path / "w.pt").write_bytes(b"x")

    def record(done, stop_after):
        (tmp_path / "recipe.json").write_text(json.dumps({"weights": "w.pt", "config": {"stop_after": stop_after},
                                                          "runs": [{"steps_done": done, "schedule_steps": 1200}]}))
        return finished_weights(tmp_path)

    assert record(600, 600) == tmp_path / "w.pt"  # the shipped CLIP's recipe: step 600 of a 1,200-step schedule
    assert record(500, 600) is None  # interrupted before its export step: resume
    assert record(600, None) is None  # the whole schedule was asked for
    assert record(1200, None) == tmp_path / "w.pt"


# --- CoCa quality on crops of automatic masks ------------------------------------------------------------------------

def test_one_to_one_matching_keeps_each_object_once_on_its_best_mask():
    from pseudo_ris.foundation.evaluate import match_one_to_one

    iou = np.array([[0.9, 0.6], [0.8, 0.1], [0.55, 0.4]])
    # mask 0 takes object 0 (0.9); object 1's only mask >= 0.5 is mask 0, already used; 0.4 is below the bar
    assert match_one_to_one(iou, 0.5) == [(0, 0)]
    iou = np.array([[0.0, 0.7], [0.5, 0.0], [0.0, 0.6]])
    assert match_one_to_one(iou, 0.5) == [(1, 0), (0, 1)]  # GT order; IoU exactly 0.5 counts; mask 2 a duplicate
    assert match_one_to_one(np.zeros((0, 3)), 0.5) == []


def test_sam_crop_masks_returns_matched_masks_with_their_objects():
    from types import SimpleNamespace

    from pseudo_ris.foundation.evaluate import sam_crop_masks
    from pseudo_ris.masks.source import ObjectMask

    def box(y0, y1, x0, x1):
        m = np.zeros((10, 10), bool)
        m[y0:y1, x0:x1] = True
        return m

    objects = [SimpleNamespace(mask=box(0, 4, 0, 4)), SimpleNamespace(mask=box(6, 10, 6, 10)),
               SimpleNamespace(mask=box(0, 2, 8, 10))]
    scene = SimpleNamespace(image=np.zeros((10, 10, 3), np.uint8), objects=objects)
    found = [box(6, 10, 6, 9),   # object 1, IoU 12/16
             box(0, 4, 0, 2),    # object 0, IoU 8/16 = 0.5
             box(0, 10, 0, 10)]  # background: IoU 16/100 with object 0
    masks, index = sam_crop_masks(lambda image: [ObjectMask(m) for m in found], scene, 0.5)
    assert index == [0, 1]
    assert np.array_equal(masks[0], found[1]) and np.array_equal(masks[1], found[0])
    masks, index = sam_crop_masks(lambda image: [], scene, 0.5)
    assert index == [] and masks.shape == (0, 10, 10)


def test_evaluate_coca_on_sam_crops_judges_matched_objects_only():
    from pseudo_ris.foundation.data import scene_at
    from pseudo_ris.foundation.evaluate import evaluate_coca

    paths = ensure_foundation_models(ROOT / ".cache-unused", retrain=False)
    gt = evaluate_coca(paths["coca"], num_images=1, samples_per_crop=1, progress=False)["summary"]
    sam = evaluate_coca(paths["coca"], num_images=1, samples_per_crop=1, masks="sam", progress=False)["summary"]
    n_objects = len(scene_at("coca_eval", 0, 0).objects)
    assert gt["masks"] == "gt" and gt["objects"] == n_objects and "sam_matched_share" not in gt
    assert sam["masks"] == "sam" and 0 < sam["objects"] <= n_objects
    assert sam["sam_matched_share"] == round(sam["objects"] / n_objects, 4)
    assert sam["sam_settings"]["points_per_side"] == 8 and sam["sam_settings"]["selection_nms_iou"] == 0.5
    with pytest.raises(ValueError, match="masks='box'"):
        evaluate_coca(paths["coca"], num_images=1, masks="box", progress=False)
