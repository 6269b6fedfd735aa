"""The shipped SynthRef SAM and CoCa hold the quality figures their reports and the README state.

The figures are re-measured here on a few held-out scenes (the reports' ``sam_eval`` / ``coca_eval`` streams) with
code written for the test: segment_anything's own automatic generator and predictor, CoCa's own forward pass, and
IoU / argmax by hand, not the project's evaluation functions. A small sample is noisy, so the measured value must
reach the shipped one minus a margin; the margins are far tighter than what a broken or untrained model gives
(random-init SAM: recall ~0; random CoCa: shape accuracy ~1/9). The slow variants use more scenes and tighter
margins.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "pseudo_ris" / "assets" / "foundation"


def _report(name: str) -> dict:
    return json.loads((ASSETS / name).read_text())["summary"]


SAM8 = _report("sam_quality_pps8_nms05.json")
COCA = _report("coca_quality.json")
COCA_SAM = _report("coca_quality_sam.json")  # the same CoCa on crops of the shipped SAM's automatic masks


# ---------------------------------------------------------------- the documents quote the reports


def _close(quoted: str, value: float, decimals: int) -> bool:
    return abs(float(quoted) - value) <= 0.5 * 10 ** -decimals + 1e-9  # rounding, either way at the half


def test_readme_quotes_the_shipped_reports():
    text = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"recall ([0-9.]+) @ IoU 0\.5 with ([0-9.]+) masks per image", text)
    assert m, "README: SAM recall sentence missing"
    assert _close(m.group(1), SAM8["recall@0.5"], 2) and _close(m.group(2), SAM8["masks_per_image"], 1)
    m = re.search(r"names the shape right (\d+) % of the time and colour (\d+) % under forced choice, but size only "
                  r"(\d+) %", text)
    assert m, "README: CoCa quality sentence missing"
    assert _close(m.group(1), 100 * COCA["greedy_shape_acc"], 0)
    assert _close(m.group(2), 100 * COCA["forced_colour_acc"], 0)
    assert _close(m.group(3), 100 * COCA["forced_size_acc"], 0)


def test_assets_readme_quotes_the_shipped_reports():
    text = (ASSETS / "README.md").read_text()
    sam16 = _report("sam_quality.json")
    m = re.search(r"\*\*mean IoU ([0-9.]+)\*\*", text)
    assert m and _close(m.group(1), sam16["prompted_best_of_3_iou"], 3)
    m = re.search(r"\| \*\*8\*\* \| \*\*0\.5 / 0\.8\*\* \| \*\*0\.5\*\* \| \*\*([0-9.]+)\*\* \| \*\*([0-9.]+)\*\* \| "
                  r"\*\*([0-9.]+)\*\* \| \*\*([0-9.]+)\*\* \|", text)
    assert m, "assets README: the recommended SAM row is missing"
    for quoted, key, decimals in zip(m.groups(), ("recall@0.5", "recall@0.75", "precision@0.5", "masks_per_image"),
                                     (3, 3, 3, 2)):
        assert _close(quoted, SAM8[key], decimals), key
    m = re.search(r"\| forced slot after \"the\" \(argmax within the word class\) \| ([0-9.]+) \| ([0-9.]+) \| "
                  r"([0-9.]+) \|", text)
    assert m, "assets README: the forced-slot row is missing"
    for quoted, key in zip(m.groups(), ("forced_shape_acc", "forced_colour_acc", "forced_size_acc")):
        assert _close(quoted, COCA[key], 3), key
    m = re.search(r"scene\): \*\*([0-9.]+)\*\*", text)
    assert m and _close(m.group(1), COCA["in_scene_retrieval_acc"], 3)


def test_assets_readme_quotes_the_clip_report():
    text = (ASSETS / "README.md").read_text()
    clip = _report("clip_quality.json")
    for label, key in (("zero-shot shape", "zeroshot_shape_acc"), ("zero-shot colour", "zeroshot_colour_acc"),
                       ("in-scene retrieval", "in_scene_retrieval_acc")):
        m = re.search(r"\| " + label + r"[^|]*\| ([0-9.]+) \|", text)
        assert m, f"assets README: the CLIP row {label!r} is missing"
        assert _close(m.group(1), clip[key], 3), key


# ---------------------------------------------------------------- SAM, re-measured


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[P, H, W] x [G, H, W] -> [P, G] mask IoU."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1)


def measure_sam(n_scenes: int) -> dict:
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    from pseudo_ris.foundation.data import scene_at
    from pseudo_ris.foundation.registry import shipped_paths
    from pseudo_ris.masks.sam import build_sam

    sam = build_sam("tiny", checkpoint=shipped_paths()["sam"])
    amg = SamAutomaticMaskGenerator(sam, points_per_side=8, pred_iou_thresh=0.5, stability_score_thresh=0.8,
                                    box_nms_thresh=0.7)
    predictor = SamPredictor(sam)
    found, n_gt, n_pred, prompted = 0, 0, 0, []
    for i in range(n_scenes):
        scene = scene_at("sam_eval", 0, i)
        gt = np.stack([o.mask for o in scene.objects])
        pred = [r["segmentation"] for r in amg.generate(scene.image)]
        n_gt += len(gt)
        n_pred += len(pred)
        if pred:
            found += int((_iou(np.stack(pred), gt).max(0) >= 0.5).sum())
        predictor.set_image(scene.image)
        for obj in scene.objects:  # one click on the object pixel nearest its centroid, best of 3 outputs
            ys, xs = np.nonzero(obj.mask)
            k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
            out, _, _ = predictor.predict(point_coords=np.array([[xs[k] + 0.5, ys[k] + 0.5]]),
                                          point_labels=np.array([1]), multimask_output=True)
            prompted.append(float(_iou(out, obj.mask[None]).max()))
    return {"recall@0.5": found / n_gt, "masks_per_image": n_pred / n_scenes, "prompted": float(np.mean(prompted)),
            "objects": n_gt}


def _check_sam(got: dict, margin: float) -> None:
    raw = SAM8["raw_amg"]  # the generator's raw output, before the project's selection
    assert got["recall@0.5"] >= raw["recall@0.5"] - margin, got
    assert got["prompted"] >= SAM8["prompted_best_of_3_iou"] - margin, got
    assert raw["masks_per_image"] / 2 <= got["masks_per_image"] <= raw["masks_per_image"] * 2, got


def test_shipped_sam_quality_on_a_few_scenes():
    got = measure_sam(4)
    assert got["objects"] >= 12
    _check_sam(got, margin=0.15)


@pytest.mark.slow
def test_shipped_sam_quality_on_more_scenes():
    _check_sam(measure_sam(30), margin=0.06)


# ---------------------------------------------------------------- CoCa, re-measured


def sam_masks_of_objects(scene, amg) -> tuple[np.ndarray, list]:
    """For each object, the automatic mask overlapping it most if that IoU is >= 0.5 (the generator's raw output,
    8 x 8 points at pred IoU 0.5 / stability 0.8: the pseudo-labelling settings), with the objects kept."""
    gt = np.stack([o.mask for o in scene.objects])
    pred = [r["segmentation"] for r in amg.generate(scene.image)]
    if not pred:
        return np.zeros((0,) + gt.shape[1:], bool), []
    iou = _iou(np.stack(pred), gt)
    keep = [g for g in range(len(gt)) if iou[:, g].max() >= 0.5]
    return np.stack([pred[int(iou[:, g].argmax())] for g in keep]) if keep else gt[:0], [scene.objects[g] for g in keep]


def measure_coca(n_scenes: int, masks: str = "gt") -> dict:
    from pseudo_ris.captioning import load_coca
    from pseudo_ris.foundation.data import object_views, scene_at
    from pseudo_ris.foundation.registry import shipped_paths
    from pseudo_ris.synthref.vocab import COLOURS, SHAPES, SIZES

    amg = None
    if masks == "sam":
        from segment_anything import SamAutomaticMaskGenerator

        from pseudo_ris.masks.sam import build_sam

        amg = SamAutomaticMaskGenerator(build_sam("tiny", checkpoint=shipped_paths()["sam"]), points_per_side=8,
                                        pred_iou_thresh=0.5, stability_score_thresh=0.8, box_nms_thresh=0.7)

    bundle = load_coca("coca_tiny", shipped_paths()["coca"])
    model, tok = bundle.model, bundle.tokenizer
    word = {w: i for i, w in enumerate(tok.vocab)}
    colour_ids = torch.tensor([word[c] for c in COLOURS])
    texts = [(sz, c, sh) for sz in SIZES for c in COLOURS for sh in SHAPES]
    mean = torch.tensor(bundle.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std).view(1, 3, 1, 1)
    with torch.no_grad():
        text_feats = model.encode_text(tok.encode([f"a {sz} {c} {sh}" for sz, c, sh in texts]), normalize=True)
    n, greedy_ok, forced_colour_ok, zeroshot_ok = 0, 0, 0, 0
    for i in range(n_scenes):
        scene = scene_at("coca_eval", 0, i)
        if amg is None:
            crop_masks, objects = np.stack([o.mask for o in scene.objects]), scene.objects
        else:
            crop_masks, objects = sam_masks_of_objects(scene, amg)
            if not objects:
                continue
        views = object_views(scene.image, crop_masks, bundle.image_size)
        pixels = (views.flatten(0, 1) - mean) / std  # [N*4, 3, S, S], object-major
        truth = [o for o in objects for _ in range(views.shape[1])]
        with torch.no_grad():
            feats = model.encode_image(pixels, normalize=True)
            the = torch.tensor([[tok.sot_id, word["the"]]]).expand(len(pixels), -1)
            forced = model(pixels, the, output_labels=False)["logits"][:, -1]
            ids = torch.full((len(pixels), 1), tok.sot_id)
            for _ in range(10):  # greedy captions, full recomputation at every step
                z = model(pixels, ids, output_labels=False)["logits"][:, -1]
                z[:, [tok.pad_id, tok.sot_id]] = float("-inf")
                ids = torch.cat([ids, z.argmax(-1, keepdim=True)], dim=1)
                if bool((ids == tok.eot_id).any(dim=1).all()):
                    break
        best_text = (feats @ text_feats.T).argmax(-1)
        for row, obj in enumerate(truth):
            n += 1
            words = []
            for t in ids[row, 1:].tolist():
                if t == tok.eot_id:
                    break
                words.append(tok.vocab[t])
            greedy_ok += [w for w in words if w in SHAPES] == [obj.shape]
            forced_colour_ok += COLOURS[int(forced[row, colour_ids].argmax())] == obj.colour
            zeroshot_ok += texts[int(best_text[row])][2] == obj.shape
    return {"greedy_shape": greedy_ok / n, "forced_colour": forced_colour_ok / n, "zeroshot_shape": zeroshot_ok / n,
            "crops": n}


def _check_coca(got: dict, margin: float, report: dict = COCA) -> None:
    assert got["greedy_shape"] >= report["greedy_shape_acc"] - margin, got
    assert got["forced_colour"] >= report["forced_colour_acc"] - margin, got
    assert got["zeroshot_shape"] >= report["zeroshot_shape_acc"] - margin, got


def test_shipped_coca_quality_on_a_few_scenes():
    got = measure_coca(3)
    assert got["crops"] >= 40
    _check_coca(got, margin=0.15)


def test_shipped_coca_quality_on_sam_crops_of_a_few_scenes():
    got = measure_coca(4, masks="sam")
    assert got["crops"] >= 40
    _check_coca(got, margin=0.15, report=COCA_SAM)


@pytest.mark.slow
def test_shipped_coca_quality_on_more_scenes():
    _check_coca(measure_coca(30), margin=0.06)


# ---------------------------------------------------------------- CLIP stand-in, re-measured

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _square_crop(image: np.ndarray, mask: np.ndarray, margin: float, masked: bool, size: int) -> torch.Tensor:
    """The object's box scaled by ``margin`` about its centre (pixels off the mask greyed when ``masked``), centred on
    a mean-colour square, resized with PIL: a crop written for the test, not the generator's."""
    from PIL import Image

    ys, xs = np.nonzero(mask)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    hw, hh = (xs.max() + 1 - xs.min()) * margin / 2, (ys.max() + 1 - ys.min()) * margin / 2
    x0, y0 = max(0, int(np.floor(cx - hw))), max(0, int(np.floor(cy - hh)))
    x1, y1 = min(image.shape[1], int(np.ceil(cx + hw))), min(image.shape[0], int(np.ceil(cy + hh)))
    fill = np.array(CLIP_MEAN) * 255
    crop = image[y0:y1, x0:x1].astype(np.float64)
    if masked:
        crop = np.where(mask[y0:y1, x0:x1, None], crop, fill)
    side = max(crop.shape[:2])
    canvas = np.tile(fill, (side, side, 1))
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    canvas[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    pil = Image.fromarray(canvas.round().astype(np.uint8)).resize((size, size), Image.BILINEAR)
    t = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (t - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def measure_clip(n_scenes: int) -> dict:
    import itertools

    import open_clip

    from pseudo_ris.captioning.coca import register_project_configs
    from pseudo_ris.foundation.data import scene_at
    from pseudo_ris.foundation.registry import shipped_paths
    from pseudo_ris.synthref.vocab import COLOURS, SHAPES

    register_project_configs()  # the clip_synthref architecture file (configs only)
    model = open_clip.create_model("clip_synthref", pretrained=str(shipped_paths()["clip"])).eval()
    tok = open_clip.get_tokenizer("clip_synthref")
    pairs = list(itertools.product(COLOURS, SHAPES))
    n = shape_ok = colour_ok = picked = unique = 0
    with torch.no_grad():
        prompts = model.encode_text(tok([f"a photo of a {c} {s}" for c, s in pairs]), normalize=True)
        for i in range(n_scenes):
            scene = scene_at("clip_eval", 0, i)
            objs = scene.objects
            masked = torch.stack([_square_crop(scene.image, o.mask, 1.0, True, 128) for o in objs])
            context = torch.stack([_square_crop(scene.image, o.mask, 1.2, False, 128) for o in objs])
            best = (model.encode_image(masked, normalize=True) @ prompts.T).argmax(1)
            for k, o in enumerate(objs):
                n += 1
                shape_ok += pairs[int(best[k])][1] == o.shape
                colour_ok += pairs[int(best[k])][0] == o.colour
            texts = model.encode_text(tok([f"a {o.colour} {o.shape}" for o in objs]), normalize=True)
            sims = model.encode_image(context, normalize=True) @ texts.T
            for k, o in enumerate(objs):  # a caption naming one object only: is that object its best crop?
                if len(objs) > 1 and sum((p.colour, p.shape) == (o.colour, o.shape) for p in objs) == 1:
                    unique += 1
                    picked += int(sims[:, k].argmax()) == k
    return {"shape": shape_ok / n, "colour": colour_ok / n, "retrieval": picked / max(unique, 1), "objects": n}


def _check_clip(got: dict, margin: float) -> None:
    clip = _report("clip_quality.json")
    assert got["shape"] >= clip["zeroshot_shape_acc"] - margin, got
    assert got["colour"] >= clip["zeroshot_colour_acc"] - margin, got
    assert got["retrieval"] >= clip["in_scene_retrieval_acc"] - margin, got


def test_shipped_clip_quality_on_a_few_scenes():
    got = measure_clip(4)
    assert got["objects"] >= 12
    _check_clip(got, margin=0.15)


@pytest.mark.slow
def test_shipped_clip_quality_on_more_scenes():
    _check_clip(measure_clip(30), margin=0.06)


@pytest.mark.slow
def test_shipped_coca_quality_on_sam_crops_of_more_scenes():
    _check_coca(measure_coca(30, masks="sam"), margin=0.06, report=COCA_SAM)
