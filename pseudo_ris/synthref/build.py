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

import contextlib
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_bytes, atomic_write_json
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
_STREAM_SPLITS, _STREAM_LABELLED, _STREAM_POOL = 0, 1, 2


class SynthRefError(PseudoRISError):
    """SynthRef cannot be built (unwritable root, impossible config)."""


def _image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
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
    order = _image_rng(cfg.seed, _STREAM_SPLITS, 0).permutation(n)
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


def _scene_for_split(rng: np.random.Generator, cfg: SynthRefConfig, split: str) -> Scene:
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


def _must_name(obj: dict, split: str, cfg: SynthRefConfig) -> tuple[str, ...]:
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


def build_synthref(root: str | Path, seed: int | None = None, num_images: int | None = None,
                   pool_images: int | None = None, cfg: SynthRefConfig | Mapping[str, Any] | None = None,
                   progress: bool = True) -> Path:
    """Generate all SynthRef datasets under ``root`` (arguments override the same fields of ``cfg``)."""
    cfg = SynthRefConfig.from_any(cfg, seed=seed, num_images=num_images, pool_images=pool_images)
    root = Path(root).expanduser()
    _check_writable(root)
    (root / BUILD_MARKER).unlink(missing_ok=True)  # a rebuild is incomplete until the marker is rewritten
    start = time.perf_counter()
    image_dir = root / IMAGE_SUBDIR
    size = cfg.scene.image_size
    categories = [{"id": k + 1, "name": s, "supercategory": shape_family(s)} for k, s in enumerate(cfg.scene.shapes)]
    cat_ids = {c["name"]: c["id"] for c in categories}

    splits = assign_splits(cfg)
    images: list[dict] = []
    annotations: list[dict] = []
    refs: dict[str, list[dict]] = {name: [] for name in LABELLED_DATASETS}
    next_sent = {name: 1 for name in LABELLED_DATASETS}
    bar = tqdm(total=cfg.num_images + cfg.pool_images, desc="SynthRef", unit="img", disable=not progress)
    for index, split in enumerate(splits):
        rng = _image_rng(cfg.seed, _STREAM_LABELLED, index)
        scene = _scene_for_split(rng, cfg, split)
        image_id = index + 1
        file_name = f"synthref_{image_id:06d}.png"
        atomic_write_bytes(image_dir / file_name, _png_bytes(scene.image, cfg.png_compress_level))
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size, "split": split,
                       "background": scene.background})
        anns = _annotations(scene, image_id, cat_ids)
        annotations.extend(anns)
        objects = [{**a["attributes"], "bbox": a["bbox"]} for a in anns]
        n_refs = 0
        for t in rng.permutation(len(objects)):
            t = int(t)
            if n_refs >= cfg.max_refs_per_image:
                break
            if not _eligible(objects[t], split, cfg):
                continue
            made = False
            must_name = _must_name(objects[t], split, cfg)
            for name, (style, split_by) in LABELLED_DATASETS.items():
                texts = generate_expressions(objects, t, style, rng, size, cfg.min_paraphrases, cfg.max_paraphrases,
                                             cfg.overspecify_rate, cfg.extra_relation_rate, must_name)
                if not texts:
                    continue
                sentences = []
                for text in texts:
                    sentences.append(make_sentence(next_sent[name], text))
                    next_sent[name] += 1
                ref_split = _UMD_SPLIT.get(split, split) if split_by == "umd" else split
                refs[name].append({"ref_id": len(refs[name]) + 1, "ann_id": anns[t]["id"], "image_id": image_id,
                                   "file_name": file_name, "split": ref_split, "category_id": anns[t]["category_id"],
                                   "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
                made = True
            n_refs += made
        bar.update(1)

    rel_image_dir = os.path.join("..", IMAGE_SUBDIR)
    info = {"generator": "synthref", "generator_version": GENERATOR_VERSION, "seed": cfg.seed,
            "image_size": size, "held_out_shapes": list(cfg.held_out_shapes),
            "held_out_colours": list(cfg.held_out_colours), "test_split_families": dict(TEST_SPLIT_FAMILIES)}
    for name, (style, split_by) in LABELLED_DATASETS.items():
        write_refer_dataset(root, name, split_by=split_by, images=images, annotations=annotations,
                            categories=categories, refs=refs[name], image_dir=rel_image_dir,
                            extra_info={**info, "style": style})

    # --- unlabelled pool: every concept, GT instances kept only for measuring pseudo-label quality / masks=gt
    pool_imgs: list[dict] = []
    pool_anns: list[dict] = []
    pool_refs: list[dict] = []
    for index in range(cfg.pool_images):
        rng = _image_rng(cfg.seed, _STREAM_POOL, index)
        scene = render_scene(rng, cfg.scene)
        image_id = _POOL_ID_OFFSET + index + 1
        file_name = f"pool_{index + 1:06d}.png"
        atomic_write_bytes(image_dir / file_name, _png_bytes(scene.image, cfg.png_compress_level))
        pool_imgs.append({"id": image_id, "file_name": file_name, "height": size, "width": size, "split": "train",
                          "background": scene.background})
        anns = _annotations(scene, image_id, cat_ids)
        pool_anns.extend(anns)
        for ann in anns:
            pool_refs.append({"ref_id": len(pool_refs) + 1, "ann_id": ann["id"], "image_id": image_id,
                              "file_name": file_name, "split": "train", "category_id": ann["category_id"],
                              "sent_ids": [], "sentences": []})
        bar.update(1)
    bar.close()
    write_refer_dataset(root, POOL_DATASET, split_by="unc", images=pool_imgs, annotations=pool_anns,
                        categories=categories, refs=pool_refs, image_dir=rel_image_dir,
                        extra_info={**info, "style": None, "unlabelled": True})

    summary = summarize(refs, pool_refs, images, pool_imgs)
    marker = {"config": cfg.to_dict(), "cache_key": cfg.cache_key(), "generator_version": GENERATOR_VERSION,
              "summary": summary}
    atomic_write_json(root / BUILD_MARKER, marker, indent=2)  # last: marks the build complete
    _LAST_BUILD_SECONDS[str(root)] = time.perf_counter() - start  # timing kept out of the files (determinism)
    return root


_LAST_BUILD_SECONDS: dict[str, float] = {}


def last_build_seconds(root: str | Path) -> float | None:
    return _LAST_BUILD_SECONDS.get(str(Path(root).expanduser()))


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
                    progress: bool = True) -> Path:
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
    with _exclusive_lock(root / f".{cfg.cache_key()}.lock"):  # concurrent callers (e.g. DDP ranks) build once
        if is_complete(target):
            return target
        if target.exists():
            shutil.rmtree(target)  # partial build of this exact config: only ever written by us
        return build_synthref(target, cfg=cfg, progress=progress)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Advisory inter-process lock (POSIX flock; a no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_build_info(path: str | Path) -> dict:
    """The completion marker's content (config, cache key, summary)."""
    marker = Path(path) / BUILD_MARKER
    if not marker.is_file():
        raise SynthRefError(f"{path} holds no complete SynthRef build ({BUILD_MARKER} missing)")
    return json.loads(marker.read_text(encoding="utf-8"))
