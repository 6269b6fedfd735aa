"""Quality reports of the foundation models on held-out generated scenes (stream ``*_eval``, never trained on).

SAM: `SamAutomaticMaskGenerator` at explicit thresholds (SAM's defaults return nothing from a tiny CPU-trained model)
-> recall of ground-truth objects at mask IoU 0.5 / 0.75, precision, masks per image; plus the prompted
best-of-3 IoU of one click per object. CoCa: greedy-caption word accuracy, attribute prediction forced at the
attribute slot, and contrastive retrieval (the CLIP-scorer role in DoC filtering).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.io import atomic_write_json
from ..data.masks import mask_iou_matrix
from .data import scene_at, scene_rng


def evaluate_sam(checkpoint: str | Path, *, arch: str = "tiny", num_images: int = 100, seed: int = 0,
                 points_per_side: int = 16, pred_iou_thresh: float = 0.5, stability_score_thresh: float = 0.8,
                 box_nms_thresh: float = 0.7, selection_nms_iou: float = 0.7,
                 sweep: list[tuple[float, float]] | None = None, out_path: str | Path | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Automatic-mask quality of a tiny SAM at explicit thresholds.

    Reported twice: raw `SamAutomaticMaskGenerator` output, and after the generator's object-level selection
    (`pseudo_ris.masks.source.select_objects`: area filters + greedy mask-IoU NMS at ``selection_nms_iou``), which is
    what pseudo-labelling sees. ``sweep`` adds (pred_iou, stability) pairs; they are filtered from one generation at
    the loosest pair, so box NMS ran before the thresholds (a small difference from running each pair alone).
    """
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    from ..masks.sam import build_sam
    from ..masks.source import ObjectMask, SelectionConfig, select_objects

    sam = build_sam(arch, checkpoint=checkpoint)
    main = (pred_iou_thresh, stability_score_thresh)
    pairs = [tuple(p) for p in (sweep or [])]
    exact = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side, pred_iou_thresh=main[0],
                                      stability_score_thresh=main[1], box_nms_thresh=box_nms_thresh)
    loose = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side,
                                      pred_iou_thresh=min(p[0] for p in pairs),
                                      stability_score_thresh=min(p[1] for p in pairs),
                                      box_nms_thresh=box_nms_thresh) if pairs else None
    selection = SelectionConfig(nms_iou=selection_nms_iou)
    predictor = SamPredictor(sam)
    rng = scene_rng("sam_eval", seed, 10 ** 6)
    keys = [("raw", main), ("selected", main)] + [("selected", p) for p in pairs]
    stats = {k: {"matched50": 0, "matched75": 0, "tp50": 0, "dup50": 0, "n_pred": 0} for k in keys}
    n_gt, prompted, t_gen = 0, [], 0.0
    for i in tqdm(range(num_images), desc="eval sam", disable=not progress):
        scene = scene_at("sam_eval", seed, i)
        gt = np.stack([o.mask for o in scene.objects])
        n_gt += len(gt)
        t0 = time.time()
        records = exact.generate(scene.image)
        t_gen += time.time() - t0
        loose_records = loose.generate(scene.image) if loose is not None else []
        for kind, pair in keys:
            source = records if pair == main else loose_records
            kept = [r for r in source if r["predicted_iou"] >= pair[0] and r["stability_score"] >= pair[1]]
            masks = [r["segmentation"] for r in kept]
            if kind == "selected":
                objs = [ObjectMask(mask=r["segmentation"], score=float(r["predicted_iou"])) for r in kept]
                masks = [o.mask for o in select_objects(objs, scene.image.shape, selection)]
            pred = np.stack(masks) if masks else np.zeros((0,) + gt.shape[1:], bool)
            iou = mask_iou_matrix(pred, gt)
            best_gt = iou.max(0) if len(pred) else np.zeros(len(gt))
            s = stats[(kind, pair)]
            s["matched50"] += int((best_gt >= 0.5).sum())
            s["matched75"] += int((best_gt >= 0.75).sum())
            hits = iou.max(1) >= 0.5 if len(pred) else np.zeros(0, bool)
            s["tp50"] += int(hits.sum())
            s["dup50"] += int(hits.sum()) - len(set(iou.argmax(1)[hits].tolist()))  # second masks of one object
            s["n_pred"] += len(pred)
        # prompted quality: one click inside each object, best of the 3 outputs (the training objective)
        predictor.set_image(scene.image)
        for obj in scene.objects:
            ys, xs = np.nonzero(obj.mask)
            k = int(rng.integers(len(xs)))
            out, _, _ = predictor.predict(point_coords=np.array([[xs[k] + 0.5, ys[k] + 0.5]]),
                                          point_labels=np.array([1]), multimask_output=True)
            prompted.append(float(mask_iou_matrix(out, obj.mask[None]).max()))

    def row(key: tuple) -> dict[str, float]:
        s = stats[key]
        return {"pred_iou_thresh": key[1][0], "stability_score_thresh": key[1][1],
                "recall@0.5": round(s["matched50"] / max(n_gt, 1), 4),
                "recall@0.75": round(s["matched75"] / max(n_gt, 1), 4),
                "precision@0.5": round(s["tp50"] / max(s["n_pred"], 1), 4),
                "masks_per_image": round(s["n_pred"] / num_images, 3),
                "duplicates_per_image": round(s["dup50"] / num_images, 3)}

    summary = {**row(("selected", main)), "raw_amg": row(("raw", main)),
               "prompted_best_of_3_iou": round(float(np.mean(prompted)), 4), "gt_per_image": n_gt / num_images,
               "amg_seconds_per_image": round(t_gen / num_images, 3), "points_per_side": points_per_side,
               "box_nms_thresh": box_nms_thresh, "selection_nms_iou": selection_nms_iou, "num_images": num_images}
    report = {"summary": summary, "sweep_selected": [row(("selected", p)) for p in pairs],
              "checkpoint": str(checkpoint)}
    if out_path is not None:
        atomic_write_json(out_path, report, indent=1)
    return report


# ---------------------------------------------------------------------------------------------------------------
# CoCa
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def _decoder_logits(model: Any, image_embs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[B, V]`` after prefix ``ids [B, t]`` (uncached; captions here are a few words)."""
    _, token_embs = model._encode_text(ids)
    return model.text_decoder(image_embs, token_embs)[:, -1]


@torch.no_grad()
def greedy_captions(bundle: Any, pixels: torch.Tensor, max_len: int = 12, temperature: float = 0.0,
                    generator: torch.Generator | None = None) -> list[str]:
    """Greedy (``temperature`` 0) or plain sampled captions of normalised pixels, for quality checks only."""
    model, tok = bundle.model, bundle.tokenizer
    _, image_embs = model._encode_image(pixels)
    ids = torch.full((len(pixels), 1), tok.sot_id, dtype=torch.long)
    done = torch.zeros(len(pixels), dtype=torch.bool)
    for _ in range(max_len):
        logits = _decoder_logits(model, image_embs, ids)
        logits[:, tok.pad_id] = -float("inf")
        logits[:, tok.sot_id] = -float("inf")
        if temperature > 0:
            nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, tok.pad_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == tok.eot_id
        if bool(done.all()):
            break
    return [tok.decode(row) for row in ids]


def _words_of(caption: str, vocab: tuple[str, ...]) -> list[str]:
    return [w for w in caption.split() if w in vocab]


# The main job's automatic-mask settings (conf/train.yaml's pseudo_labels.generate with conf/generate.yaml).
SAM_CROP_SETTINGS: dict[str, Any] = {"points_per_side": 8, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8,
                                     "box_nms_thresh": 0.7, "selection_nms_iou": 0.5}


def match_one_to_one(iou: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Greedy one-to-one (prediction, GT) pairs by decreasing IoU, each pair at IoU >= ``min_iou``, in GT order.

    A duplicate mask of an already matched object is left out, so each object is judged once, on its best mask."""
    pairs: list[tuple[int, int]] = []
    used_pred: set[int] = set()
    used_gt: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        p, g = np.unravel_index(int(flat), iou.shape)
        if iou[p, g] < min_iou:
            break
        if p not in used_pred and g not in used_gt:
            pairs.append((int(p), int(g)))
            used_pred.add(int(p))
            used_gt.add(int(g))
    return sorted(pairs, key=lambda pg: pg[1])


def sam_crop_masks(sam_source: Any, scene: Any, min_iou: float = 0.5) -> tuple[np.ndarray, list[int]]:
    """The automatic masks of ``scene`` that match a GT object (`match_one_to_one`) and the object index of each."""
    found = sam_source(scene.image)
    gt = np.stack([o.mask for o in scene.objects])
    if not found:
        return np.zeros((0,) + gt.shape[1:], bool), []
    pred = np.stack([m.mask for m in found])
    pairs = match_one_to_one(mask_iou_matrix(pred, gt), min_iou)
    return (pred[[p for p, _ in pairs]] if pairs else np.zeros((0,) + gt.shape[1:], bool)), [g for _, g in pairs]


def _shipped_sam_source(sam_checkpoint: str | Path | None, settings: dict[str, Any]) -> Any:
    from ..masks.sam import build_sam
    from ..masks.source import SamMaskSource, SelectionConfig
    from .registry import shipped_paths

    opts = dict(settings)
    selection = SelectionConfig(nms_iou=float(opts.pop("selection_nms_iou")))
    sam = build_sam("tiny", checkpoint=sam_checkpoint or shipped_paths()["sam"])
    return SamMaskSource(sam, selection=selection, **opts)


def evaluate_coca(checkpoint: str | Path, *, arch: str | None = None, num_images: int = 100, seed: int = 0,
                  samples_per_crop: int = 3, masks: str = "gt", sam_checkpoint: str | Path | None = None,
                  sam_settings: dict[str, Any] | None = None, match_iou: float = 0.5,
                  out_path: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Caption and contrastive quality of a tiny CoCa on held-out objects (all 4 generator views).

    ``masks="gt"`` crops every object with its exact mask. ``masks="sam"`` crops what pseudo-labelling sees: the
    masks of a tiny SAM's automatic generator (``sam_checkpoint``, default the shipped one, at ``sam_settings``,
    default the main job's `SAM_CROP_SETTINGS`) matched one-to-one to objects at mask IoU >= ``match_iou``; each
    matched object is judged by the crops of its mask, unmatched objects are left out (``sam_matched_share``).

    - greedy captions: shape-word accuracy; how often colour / size are mentioned and how often they are right;
    - sampled captions (plain, T=1): the same, what distinctive sampling has to work with;
    - forced attribute slot: after the prefix "the", the most likely colour / size / shape word (restricted to that
      word class) vs the truth ("the" avoids the a/an agreement, which leaks the first letter);
    - contrastive: zero-shot attribute classification over all "a {size} {colour} {shape}" texts, and in-scene
      retrieval (the DoC role): for an object whose attribute triple is unique in its scene, its full text must
      score its own margin-1.2 crop above every other object's.
    """
    from ..captioning.coca import load_coca
    from ..synthref.vocab import COLOURS, SHAPES, SIZES
    from .data import object_views

    if masks not in ("gt", "sam"):
        raise ValueError(f"masks={masks!r}: choose gt or sam")
    settings = {**SAM_CROP_SETTINGS, **(sam_settings or {})}
    sam_source = _shipped_sam_source(sam_checkpoint, settings) if masks == "sam" else None
    bundle = load_coca(arch or _stored_name(checkpoint), pretrained=checkpoint)
    model, tok = bundle.model.eval(), bundle.tokenizer
    gen = torch.Generator().manual_seed(seed)
    full_texts = [f"a {sz} {c} {sh}" for sz in SIZES for c in COLOURS for sh in SHAPES]
    full_attrs = [(sz, c, sh) for sz in SIZES for c in COLOURS for sh in SHAPES]
    with torch.no_grad():
        text_feats = model.encode_text(tok.encode(full_texts), normalize=True)
    word_ids = {name: torch.tensor([tok.index[w] for w in words])
                for name, words in (("colour", COLOURS), ("size", SIZES), ("shape", SHAPES))}
    the_prefix = torch.tensor([[tok.sot_id, tok.index["the"]]])

    n_views = 4
    acc = {k: np.zeros(n_views) for k in ("n", "g_shape", "g_colour_m", "g_colour_ok", "g_size_m", "g_size_ok",
                                          "s_n", "s_shape", "s_colour_m", "s_colour_ok", "s_size_m", "s_size_ok",
                                          "f_colour", "f_size", "f_shape", "z_colour", "z_size", "z_shape")}
    retrieval_hits, retrieval_n, pos_cos, neg_cos = 0, 0, [], []
    examples: list[dict] = []
    n_gt_objects = 0
    for i in tqdm(range(num_images), desc=f"eval coca ({masks} masks)", disable=not progress):
        scene = scene_at("coca_eval", seed, i)
        n_gt_objects += len(scene.objects)
        if sam_source is None:
            crop_masks, objects = np.stack([o.mask for o in scene.objects]), list(scene.objects)
        else:
            crop_masks, index = sam_crop_masks(sam_source, scene, match_iou)
            objects = [scene.objects[g] for g in index]
            if not objects:
                continue
        views = object_views(scene.image, crop_masks, bundle.image_size)  # [N, 4, 3, S, S]
        n = len(objects)
        pixels = bundle.preprocess(views.flatten(0, 1))
        with torch.no_grad():
            latents, image_embs = model._encode_image(pixels)
            forced = _decoder_logits(model, image_embs, the_prefix.expand(len(pixels), -1))
        greedy = greedy_captions(bundle, pixels)
        sampled = [greedy_captions(bundle, pixels, temperature=1.0, generator=gen) for _ in range(samples_per_crop)]
        sims = latents @ text_feats.t()  # [N*4, 144]
        for row in range(len(pixels)):
            obj, v = objects[row // n_views], row % n_views
            truth = {"colour": obj.colour, "size": obj.size, "shape": obj.shape}
            acc["n"][v] += 1
            for prefix, caps in (("g", [greedy[row]]), ("s", [s[row] for s in sampled])):
                for cap in caps:
                    if prefix == "s":
                        acc["s_n"][v] += 1
                    shapes, colours, sizes = (_words_of(cap, SHAPES), _words_of(cap, COLOURS),
                                              _words_of(cap, SIZES))
                    acc[f"{prefix}_shape"][v] += shapes == [obj.shape]
                    acc[f"{prefix}_colour_m"][v] += bool(colours)
                    acc[f"{prefix}_colour_ok"][v] += colours == [obj.colour]
                    acc[f"{prefix}_size_m"][v] += bool(sizes)
                    acc[f"{prefix}_size_ok"][v] += sizes == [obj.size]
            for name, ids in word_ids.items():
                best = ids[int(forced[row, ids].argmax())]
                acc[f"f_{name}"][v] += tok.vocab[int(best)] == truth[name]
            sz, c, sh = full_attrs[int(sims[row].argmax())]
            acc["z_size"][v] += sz == obj.size
            acc["z_colour"][v] += c == obj.colour
            acc["z_shape"][v] += sh == obj.shape
            if len(examples) < 24 and v == 3:
                examples.append({"truth": truth, "greedy": greedy[row], "samples": [s[row] for s in sampled]})
        # in-scene retrieval with each object's full text against the margin-1.2 crops (view 3)
        triples = [(o.size, o.colour, o.shape) for o in objects]
        crop_lat = latents.view(n, n_views, -1)[:, 3]
        for k, triple in enumerate(triples):
            t_feat = text_feats[full_attrs.index(triple)]
            cos = crop_lat @ t_feat
            pos_cos.append(float(cos[k]))
            neg_cos.extend(float(cos[j]) for j in range(n) if triples[j] != triple)
            if triples.count(triple) == 1 and n > 1:
                retrieval_n += 1
                retrieval_hits += int(int(cos.argmax()) == k)

    def rate(num: str, den: str = "n") -> list[float]:
        return [round(float(a) / max(float(b), 1), 4) for a, b in zip(acc[num], acc[den])]

    per_view = {
        "greedy_shape_acc": rate("g_shape"), "greedy_colour_mentioned": rate("g_colour_m"),
        "greedy_colour_correct_when_mentioned": rate("g_colour_ok", "g_colour_m"),
        "greedy_size_mentioned": rate("g_size_m"), "greedy_size_correct_when_mentioned": rate("g_size_ok", "g_size_m"),
        "sampled_shape_acc": rate("s_shape", "s_n"), "sampled_colour_mentioned": rate("s_colour_m", "s_n"),
        "sampled_colour_correct_when_mentioned": rate("s_colour_ok", "s_colour_m"),
        "sampled_size_mentioned": rate("s_size_m", "s_n"),
        "sampled_size_correct_when_mentioned": rate("s_size_ok", "s_size_m"),
        "forced_colour_acc": rate("f_colour"), "forced_size_acc": rate("f_size"), "forced_shape_acc": rate("f_shape"),
        "zeroshot_colour_acc": rate("z_colour"), "zeroshot_size_acc": rate("z_size"),
        "zeroshot_shape_acc": rate("z_shape"),
    }

    def overall(num: str, den: str = "n") -> float:
        return round(float(acc[num].sum()) / max(float(acc[den].sum()), 1), 4)

    summary = {
        "masks": masks, "objects": int(acc["n"][0]), "num_images": num_images,
        "greedy_shape_acc": overall("g_shape"),
        "greedy_colour_mentioned": overall("g_colour_m"),
        "greedy_size_mentioned": overall("g_size_m"),
        "sampled_colour_correct_when_mentioned": overall("s_colour_ok", "s_colour_m"),
        "sampled_size_correct_when_mentioned": overall("s_size_ok", "s_size_m"),
        "forced_shape_acc": overall("f_shape"), "forced_colour_acc": overall("f_colour"),
        "forced_size_acc": overall("f_size"),
        "zeroshot_shape_acc": overall("z_shape"), "zeroshot_colour_acc": overall("z_colour"),
        "zeroshot_size_acc": overall("z_size"),
        "in_scene_retrieval_acc": round(retrieval_hits / max(retrieval_n, 1), 4), "in_scene_retrieval_n": retrieval_n,
        "cosine_matched_mean": round(float(np.mean(pos_cos)), 4),
        "cosine_unmatched_mean": round(float(np.mean(neg_cos)), 4) if neg_cos else None,
        "cosine_min": round(float(min(pos_cos + neg_cos)), 4),
    }
    if masks == "sam":
        summary.update(sam_matched_share=round(int(acc["n"][0]) / max(n_gt_objects, 1), 4), match_iou=match_iou,
                       sam_settings=settings)
    report = {"summary": summary, "per_view": per_view, "views": ["masked", "box1.0", "box1.1", "box1.2"],
              "examples": examples, "checkpoint": str(checkpoint)}
    if out_path is not None:
        atomic_write_json(out_path, report, indent=1)
    return report


def _stored_name(checkpoint: str | Path) -> str:
    obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return str(obj.get("model_name", "coca_tiny"))
