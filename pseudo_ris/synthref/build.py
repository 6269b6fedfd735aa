"""Write SynthRef in the REFER layout: synthref, synthref+, synthrefg (shared images) and synthref_pool.

Layout under ``root``::

    images/synthref/synthref_000001.png ...   labelled images (shared by the three labelled datasets)
    images/synthref/pool_000001.png ...       unlabelled pool images
    synthref/refs(unc).p  + instances.json    RefCOCO-style   train / val / testA / testB / unseen
    synthref+/refs(unc).p + instances.json    RefCOCO+-style  (no absolute-location words)
    synthrefg/refs(umd).p + instances.json    RefCOCOg-style  train / val / test / unseen
    synthref_pool/refs(unc).p + instances.json  one ref per GT object, split "train", no sentences
    synthref_build.json                        written last: config, cache key, per-split counts

Split design (fixed per image, identical in the three labelled datasets):

* ``train``/``val`` images contain no held-out concept at all (neither as target nor as unnamed distractor), so
  held-out words can never leak into human training text.
* ``testA`` / ``testB`` images are guaranteed an object of the curved / angular shape family (no held-out
  concepts) and their refs target only objects of that family, like RefCOCO's people / other objects.
  synthrefg (umd) calls both ``test``.
* ``unseen`` images may contain every concept; their refs target only objects with a held-out shape or colour.
* The pool contains every concept (held-out included): pseudo-labelling can reach concepts humans never named.

Every image is drawn from its own rng (``SeedSequence([seed, stream, index])``), so the output is a pure function
of the config: two builds with the same config are byte-identical.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_bytes, atomic_write_json
from pseudo_ris.data.locks import directory_lock, file_lock
from pseudo_ris.data.masks import mask_to_rle
from pseudo_ris.data.refer import make_sentence, write_refer_dataset
from pseudo_ris.synthref.config import GENERATOR_VERSION, SynthRefConfig
from pseudo_ris.synthref.expressions import generate_expressions
from pseudo_ris.synthref.scene import Scene, render_scene
from pseudo_ris.synthref.vocab import SHAPE_FAMILIES, TEST_SPLIT_FAMILIES, shape_family

#: dataset name -> (expression style, splitBy)
LABELLED_DATASETS: dict[str, tuple[str, str]] = {
    "synthref": ("refcoco", "unc"),
    "synthref+": ("refcoco+", "unc"),
    "synthrefg": ("refcocog", "umd"),
}
POOL_DATASET = "synthref_pool"
IMAGE_SUBDIR = "images/synthref"
BUILD_MARKER = "synthref_build.json"
_UMD_SPLIT = {"testA": "test", "testB": "test"}
_POOL_ID_OFFSET = 1_000_000
STREAM_SPLITS, STREAM_LABELLED, STREAM_POOL = 0, 1, 2


class SynthRefError(PseudoRISError):
    """SynthRef cannot be built (unwritable root, impossible config)."""


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent rng per (seed, stream, image): images do not depend on each other or on build order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream, int(index)]))


def assign_splits(cfg: SynthRefConfig) -> list[str]:
    """Split of each labelled image: exact counts from the fractions, order shuffled by the seed."""
    n = cfg.num_images
    fracs = cfg.split_fractions
    counts = {s: int(np.floor(f * n)) for s, f in fracs.items() if s != "train"}
    counts["train"] = n - sum(counts.values())
    if counts["train"] < 0:
        raise SynthRefError(f"split_fractions {fracs} sum to more than 1")
    labels = [s for s in ("train", "val", "testA", "testB", "unseen") if s in counts for _ in range(counts[s])]
    order = image_rng(cfg.seed, STREAM_SPLITS, 0).permutation(n)
    return [labels[int(i)] for i in order]


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SynthRefError(f"SynthRef root {root} is not writable ({exc.strerror or exc}); "
                            "pass root=<a writable directory>") from exc


def _png_bytes(image: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def scene_for_split(rng: np.random.Generator, cfg: SynthRefConfig, split: str) -> Scene:
    """A scene obeying the split's concept rules (see the module docstring)."""
    held_s, held_c = set(cfg.held_out_shapes), set(cfg.held_out_colours)
    seen_shapes = [s for s in cfg.scene.shapes if s not in held_s]
    seen_colours = [c for c in cfg.scene.colours if c not in held_c]
    if split == "unseen":
        first = ({"shape": list(cfg.held_out_shapes)} if cfg.held_out_shapes and
                 (not cfg.held_out_colours or rng.random() < 0.5) else {"colour": list(cfg.held_out_colours)})
        return render_scene(rng, cfg.scene, first=first)
    if split in TEST_SPLIT_FAMILIES:
        family = [s for s in SHAPE_FAMILIES[TEST_SPLIT_FAMILIES[split]] if s in seen_shapes]
        if not family:
            raise SynthRefError(f"no non-held-out shape of family {TEST_SPLIT_FAMILIES[split]!r} for {split}")
        return render_scene(rng, cfg.scene, shapes=seen_shapes, colours=seen_colours, first={"shape": family})
    return render_scene(rng, cfg.scene, shapes=seen_shapes, colours=seen_colours)


def _eligible(obj: dict, split: str, cfg: SynthRefConfig) -> bool:
    if split == "unseen":
        return obj["shape"] in cfg.held_out_shapes or obj["colour"] in cfg.held_out_colours
    if split in TEST_SPLIT_FAMILIES:
        return obj["family"] == TEST_SPLIT_FAMILIES[split]
    return True


def must_name_attributes(obj: dict, split: str, cfg: SynthRefConfig) -> tuple[str, ...]:
    """An unseen target's held-out colour is always named (a held-out shape is named anyway: it is the noun)."""
    return ("colour",) if split == "unseen" and obj["colour"] in cfg.held_out_colours else ()


def _annotations(scene: Scene, image_id: int, cat_ids: dict[str, int]) -> list[dict]:
    anns = []
    for obj in scene.objects:
        anns.append({"id": image_id * 100 + obj.obj_id + 1, "image_id": image_id,
                     "category_id": cat_ids[obj.shape], "segmentation": mask_to_rle(obj.mask),
                     "area": float(obj.area), "bbox": [float(v) for v in obj.bbox], "iscrowd": 0,
                     "attributes": obj.attributes()})
    return anns


def _labelled_image(job: tuple[SynthRefConfig, Path, int, str]) -> tuple[dict, list[dict], dict[str, list]]:
    """Render, write and describe labelled image ``index`` (pure function of the config: safe in a worker).

    Returns the image record, its annotations and, per dataset, ``(target position, texts)`` pairs; ids of refs
    and sentences are assigned by the caller in image order so they do not depend on the number of workers.
    """
    cfg, image_dir, index, split = job
    rng = image_rng(cfg.seed, STREAM_LABELLED, index)
    scene = scene_for_split(rng, cfg, split)
    size = cfg.scene.image_size
    image_id = index + 1
    file_name = f"synthref_{image_id:06d}.png"
    atomic_write_bytes(image_dir / file_name, _png_bytes(scene.image, cfg.png_compress_level))
    image = {"id": image_id, "file_name": file_name, "height": size, "width": size, "split": split,
             "background": scene.background}
    anns = _annotations(scene, image_id, _category_ids(cfg))
    objects = [{**a["attributes"], "bbox": a["bbox"]} for a in anns]
    described: dict[str, list] = {name: [] for name in LABELLED_DATASETS}
    n_refs = 0
    for t in rng.permutation(len(objects)):
        t = int(t)
        if n_refs >= cfg.max_refs_per_image:
            break
        if not _eligible(objects[t], split, cfg):
            continue
        made = False
        must_name = must_name_attributes(objects[t], split, cfg)
        for name, (style, _) in LABELLED_DATASETS.items():
            texts = generate_expressions(objects, t, style, rng, size, cfg.min_paraphrases, cfg.max_paraphrases,
                                         cfg.overspecify_rate, cfg.extra_relation_rate, must_name)
            if texts:
                described[name].append((t, texts))
                made = True
        n_refs += made
    return image, anns, described


def _pool_image(job: tuple[SynthRefConfig, Path, int]) -> tuple[dict, list[dict]]:
    """Render and write pool image ``index``: every concept, no text."""
    cfg, image_dir, index = job
    scene = render_scene(image_rng(cfg.seed, STREAM_POOL, index), cfg.scene)
    size = cfg.scene.image_size
    image_id = _POOL_ID_OFFSET + index + 1
    file_name = f"pool_{index + 1:06d}.png"
    atomic_write_bytes(image_dir / file_name, _png_bytes(scene.image, cfg.png_compress_level))
    image = {"id": image_id, "file_name": file_name, "height": size, "width": size, "split": "train",
             "background": scene.background}
    return image, _annotations(scene, image_id, _category_ids(cfg))


def _categories(cfg: SynthRefConfig) -> list[dict]:
    return [{"id": k + 1, "name": s, "supercategory": shape_family(s)} for k, s in enumerate(cfg.scene.shapes)]


def _category_ids(cfg: SynthRefConfig) -> dict[str, int]:
    return {c["name"]: c["id"] for c in _categories(cfg)}


def _canonical(obj: Any) -> Any:
    """Fresh objects with no shared strings: pickle memoises by object identity, so identical content built
    in one process or in several would otherwise pickle to different bytes."""
    return json.loads(json.dumps(obj))


def _ordered_map(fn: Callable, jobs: list, workers: int, bar) -> Iterator:
    """``map`` in job order, in ``workers`` processes when > 1; advances the progress bar."""
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            yield fn(job)
            bar.update(1)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(fn, jobs, chunksize=16):
            yield result
            bar.update(1)


def build_synthref(root: str | Path, seed: int | None = None, num_images: int | None = None,
                   pool_images: int | None = None, cfg: SynthRefConfig | Mapping[str, Any] | None = None,
                   progress: bool = True, workers: int = 1) -> Path:
    """Generate all SynthRef datasets under ``root`` (arguments override the same fields of ``cfg``).

    ``workers`` > 1 renders images in that many processes; the files are identical for any number of workers.
    """
    cfg = SynthRefConfig.from_any(cfg, seed=seed, num_images=num_images, pool_images=pool_images)
    root = Path(root).expanduser()
    _check_writable(root)
    with directory_lock(root, purpose="build SynthRef into (root=...)"):  # one builder per directory
        return _build_locked(root, cfg, progress, workers)


def _build_locked(root: Path, cfg: SynthRefConfig, progress: bool, workers: int) -> Path:
    (root / BUILD_MARKER).unlink(missing_ok=True)  # a rebuild is incomplete until the marker is rewritten
    image_dir = root / IMAGE_SUBDIR
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = _categories(cfg)
    bar = tqdm(total=cfg.num_images + cfg.pool_images, desc="SynthRef", unit="img", disable=not progress)

    images: list[dict] = []
    annotations: list[dict] = []
    refs: dict[str, list[dict]] = {name: [] for name in LABELLED_DATASETS}
    next_sent = {name: 1 for name in LABELLED_DATASETS}
    jobs = [(cfg, image_dir, index, split) for index, split in enumerate(assign_splits(cfg))]
    for image, anns, described in _ordered_map(_labelled_image, jobs, workers, bar):
        images.append(image)
        annotations.extend(anns)
        for name, (_, split_by) in LABELLED_DATASETS.items():
            for t, texts in described[name]:
                sentences = [make_sentence(next_sent[name] + k, text) for k, text in enumerate(texts)]
                next_sent[name] += len(texts)
                split = image["split"]
                refs[name].append({"ref_id": len(refs[name]) + 1, "ann_id": anns[t]["id"], "image_id": image["id"],
                                   "file_name": image["file_name"],
                                   "split": _UMD_SPLIT.get(split, split) if split_by == "umd" else split,
                                   "category_id": anns[t]["category_id"],
                                   "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})

    rel_image_dir = os.path.join("..", IMAGE_SUBDIR)
    info = {"generator": "synthref", "generator_version": GENERATOR_VERSION, "seed": cfg.seed,
            "image_size": cfg.scene.image_size, "held_out_shapes": list(cfg.held_out_shapes),
            "held_out_colours": list(cfg.held_out_colours), "test_split_families": dict(TEST_SPLIT_FAMILIES)}
    for name, (style, split_by) in LABELLED_DATASETS.items():
        write_refer_dataset(root, name, split_by=split_by, images=images, annotations=annotations,
                            categories=categories, refs=_canonical(refs[name]), image_dir=rel_image_dir,
                            extra_info={**info, "style": style})

    # --- unlabelled pool: every concept; GT instances only for measuring pseudo-label quality and masks=gt
    pool_imgs: list[dict] = []
    pool_anns: list[dict] = []
    pool_refs: list[dict] = []
    pool_jobs = [(cfg, image_dir, index) for index in range(cfg.pool_images)]
    for image, anns in _ordered_map(_pool_image, pool_jobs, workers, bar):
        pool_imgs.append(image)
        pool_anns.extend(anns)
        for ann in anns:
            pool_refs.append({"ref_id": len(pool_refs) + 1, "ann_id": ann["id"], "image_id": image["id"],
                              "file_name": image["file_name"], "split": "train", "category_id": ann["category_id"],
                              "sent_ids": [], "sentences": []})
    bar.close()
    write_refer_dataset(root, POOL_DATASET, split_by="unc", images=pool_imgs, annotations=pool_anns,
                        categories=categories, refs=_canonical(pool_refs), image_dir=rel_image_dir,
                        extra_info={**info, "style": None, "unlabelled": True})

    summary = summarize(refs, pool_refs, images, pool_imgs)
    marker = {"config": cfg.to_dict(), "cache_key": cfg.cache_key(), "generator_version": GENERATOR_VERSION,
              "summary": summary}
    atomic_write_json(root / BUILD_MARKER, marker, indent=2)  # last: marks the build complete (no timings:
    return root                                                # the files must be byte-identical per config)


def summarize(refs: dict[str, list[dict]], pool_refs: list[dict], images: list[dict],
              pool_imgs: list[dict]) -> dict:
    """Per dataset and split: images, refs, sentences."""
    out: dict[str, dict] = {}
    for name, rs in refs.items():
        per: dict[str, dict] = {}
        img_sets: dict[str, set] = {}
        for ref in rs:
            d = per.setdefault(ref["split"], {"images": 0, "refs": 0, "sentences": 0})
            d["refs"] += 1
            d["sentences"] += len(ref["sentences"])
            img_sets.setdefault(ref["split"], set()).add(ref["image_id"])
        for split, ids in img_sets.items():
            per[split]["images"] = len(ids)
        out[name] = per
    out[POOL_DATASET] = {"train": {"images": len(pool_imgs), "refs": len(pool_refs), "sentences": 0}}
    return out


def is_complete(path: str | Path) -> bool:
    return (Path(path) / BUILD_MARKER).is_file()


def ensure_synthref(root: str | Path, cfg: SynthRefConfig | Mapping[str, Any] | None = None,
                    progress: bool = True, workers: int = 1) -> Path:
    """Return ``<root>/<cache key>``, building SynthRef there first unless a complete build exists.

    The key hashes the whole config and the generator version, so any change gives a new directory. A build
    without its completion marker (killed midway) is deleted and rebuilt.
    """
    cfg = SynthRefConfig.from_any(cfg)
    root = Path(root).expanduser()
    _check_writable(root)
    target = root / cfg.cache_key()
    if is_complete(target):
        return target
    with file_lock(root / f".{cfg.cache_key()}.lock"):  # concurrent callers (e.g. DDP ranks) build once
        if is_complete(target):
            return target
        if target.exists():
            shutil.rmtree(target)  # partial build of this exact config: only ever written by us
        return build_synthref(target, cfg=cfg, progress=progress, workers=workers)


def read_build_info(path: str | Path) -> dict:
    """The completion marker's content (config, cache key, summary)."""
    marker = Path(path) / BUILD_MARKER
    if not marker.is_file():
        raise SynthRefError(f"{path} holds no complete SynthRef build ({BUILD_MARKER} missing)")
    return json.loads(marker.read_text(encoding="utf-8"))
