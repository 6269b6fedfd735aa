"""Config-driven generation run (what ``tools/generate.py`` calls): build source and models, generate, filter, report.

Stages: ``generate`` (masks + captions + scores into the shard's store), ``filter`` (all shards -> REFER dataset,
merged store, gallery; no model is built), ``all`` (both). The config is ``conf/generate.yaml``; any mapping with the
same keys works (tests pass plain dicts).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_json, file_digest
from pseudo_ris.data.locks import directory_lock
from pseudo_ris.filtering.doc import FilterPolicy
from pseudo_ris.filtering.nouns import build_noun_extractor
from pseudo_ris.filtering.spatial_phrases import SpatialConfig
from pseudo_ris.filtering.scorer import ClipScorer
from pseudo_ris.generation.pipeline import CocaCaptioner, PseudoLabelPipeline, RunStats, run_generation
from pseudo_ris.generation.report import write_gallery
from pseudo_ris.generation.sources import ImageSource, folder_source, refer_source, synthref_pool_source
from pseudo_ris.generation.store import CandidateStore, StoreIndex, check_meta
from pseudo_ris.generation.writer import filter_store
from pseudo_ris.masks.source import SelectionConfig, build_mask_source
from pseudo_ris.data.plain import to_plain as _plain
from pseudo_ris.validation import check_generate_options

log = logging.getLogger(__name__)

SYNTHREF_NAMES = ("synthref", "synthref+", "synthrefg", "synthref_pool")


class GenerateConfigError(PseudoRISError):
    """An invalid generation option."""


def synthref_data_root(cfg: Mapping[str, Any]) -> Path:
    """Where SynthRef lives: ``data_root`` if it already holds a build, else the cached build keyed by the
    ``synthref`` options (under ``data_root`` or ``<cache_dir>/synthref``, the trainer's default location)."""
    from pseudo_ris.synthref import ensure_synthref

    overrides = {k: v for k, v in (cfg.get("synthref") or {}).items() if v is not None}
    if cfg.get("data_root") is not None:
        root = Path(str(cfg["data_root"])).expanduser()
        if (root / "synthref_pool").is_dir() or (root / cfg["dataset"]["name"]).is_dir():
            return root
    else:
        root = Path(str(cfg.get("cache_dir", "~/.cache/pseudo_ris"))).expanduser() / "synthref"
    return ensure_synthref(root, overrides, progress=bool(cfg.get("progress", True)))


def build_image_source(cfg: Mapping[str, Any]) -> ImageSource:
    from pseudo_ris.data.refer import ReferDataset

    kind = cfg["source"]
    dataset = cfg["dataset"]["name"] if isinstance(cfg["dataset"], Mapping) else str(cfg["dataset"])
    if kind == "synthref":
        return synthref_pool_source(synthref_data_root(cfg))
    if kind == "refer":
        if dataset in SYNTHREF_NAMES:
            data_root = synthref_data_root(cfg)
        elif cfg.get("data_root") is None:
            raise GenerateConfigError(f"source=refer dataset={dataset} needs data_root=<dir with {dataset}/ and "
                                      "images/> (REFER layout)")
        else:
            data_root = Path(str(cfg["data_root"])).expanduser()
        split_by = cfg["dataset"].get("split_by") if isinstance(cfg["dataset"], Mapping) else None
        ds = ReferDataset(data_root, dataset, split_by=split_by, image_dir=cfg.get("image_dir"))
        return refer_source(ds, split=cfg.get("split", "train"))
    if kind == "folder":
        if not cfg.get("image_dir"):
            raise GenerateConfigError("source=folder needs image_dir=<folder of images>")
        return folder_source(Path(str(cfg["image_dir"])).expanduser())
    raise GenerateConfigError(f"unknown source {kind!r}; choose synthref, refer or folder")


def _word_tokenizer(context_length: int = 32) -> Any:
    from pseudo_ris.captioning import WordTokenizer

    try:
        from pseudo_ris.foundation.data import caption_vocabulary

        words = caption_vocabulary()
    except ImportError:  # pragma: no cover - foundation package absent
        from pseudo_ris.synthref import vocab

        words = sorted(set(vocab.SHAPES) | set(vocab.COLOURS) | set(vocab.SIZES) | {"a", "an", "the", "photo", "of"})
    return WordTokenizer(words, context_length=context_length)


def resolve_weights(value: Any, kind: str) -> Any:
    """``"shipped"`` -> the project's SynthRef foundation weights of ``kind`` (sam | coca | clip); other values as
    given."""
    if value != "shipped":
        return value
    from pseudo_ris.foundation.registry import shipped_paths

    return str(shipped_paths()[kind])


def build_captioner_bundle(cap: Mapping[str, Any], device: str, allow_download: bool = False) -> Any:
    from pseudo_ris.captioning import load_coca

    pretrained = resolve_weights(cap.get("pretrained"), "coca")
    tokenizer = None
    if cap.get("tokenizer") == "synthref_words" and not (pretrained and Path(pretrained).is_file()):
        tokenizer = _word_tokenizer(int(cap.get("context_length", 32)))
    if cap.get("seed") is not None:
        torch.manual_seed(int(cap["seed"]))  # random-init models: reproducible weights
    return load_coca(cap.get("name") or "", pretrained, tokenizer=tokenizer, device=device, allow_download=allow_download,
                     **(cap.get("overrides") or {}))


def check_pretrained_tags(cfg: Mapping[str, Any]) -> None:
    """The captioner's and scorer's open_clip tags are on this machine (or ``allow_download``): fail before work."""
    from open_clip.pretrained import get_pretrained_cfg

    from pseudo_ris.weights import resolve_open_clip_tag

    if cfg.get("allow_download", False):
        return
    gen = cfg["generator"]
    scorer = gen.get("scorer") or {}
    pairs = [("generator.captioner", gen.get("captioner") or {})]
    if scorer.get("kind") == "open_clip":
        pairs.append(("generator.scorer", scorer))
    for option, sub in pairs:
        name, tag = sub.get("name"), sub.get("pretrained")
        if name and tag and tag != "shipped" and get_pretrained_cfg(name, str(tag)) and not Path(str(tag)).exists():
            resolve_open_clip_tag(name, str(tag), option=f"{option}.pretrained")


def build_settings(dec: Mapping[str, Any]) -> list[Any]:
    from pseudo_ris.captioning import DecodeSetting, default_settings

    settings = dec.get("settings", "default")
    if settings == "default":
        return default_settings(int(dec.get("num_beams", 6)))
    return [DecodeSetting(s["kind"], s["value"], bool(s.get("distinctive", False))) for s in settings]


def build_scorer(sc: Mapping[str, Any], bundle: Any, device: str, allow_download: bool = False) -> ClipScorer:
    """The DoC scorer of ``generator.scorer``: the captioner's contrastive head, or an open_clip model (``pretrained:
    shipped`` = the SynthRef CLIP stand-in shipped with the package)."""
    if sc["kind"] == "captioner":
        return ClipScorer.from_coca_bundle(bundle, device=device)
    if sc["kind"] == "open_clip":
        return ClipScorer.from_open_clip(sc["name"], resolve_weights(sc.get("pretrained"), "clip"), device=device,
                                         allow_download=allow_download)
    raise GenerateConfigError(f"unknown scorer kind {sc['kind']!r}; choose captioner or open_clip")


def build_pipeline(cfg: Mapping[str, Any], source: ImageSource) -> PseudoLabelPipeline:
    device = cfg.get("device", "cpu")
    gen = cfg["generator"]
    allow_download = bool(cfg.get("allow_download", False))
    bundle = build_captioner_bundle(gen["captioner"], device, allow_download)
    dec = cfg.get("decoding", {})
    captioner = CocaCaptioner(bundle, build_settings(dec), batch_size=dec.get("batch_size", 256),
                              precision=str(dec.get("precision", "fp32")),
                              min_len=int(dec.get("min_len", 5)), max_len=int(dec.get("max_len", 30)))
    scorer = build_scorer(gen["scorer"], bundle, device, allow_download)

    sel = SelectionConfig(**(cfg.get("selection") or {}))
    sam_cfg = dict(cfg.get("sam") or {})
    sam_name, sam_ckpt = sam_cfg.pop("name", "tiny"), resolve_weights(sam_cfg.pop("checkpoint", None), "sam")
    sam_seed = sam_cfg.pop("seed", None)

    def sam_factory() -> Any:
        from pseudo_ris.masks.sam import build_sam

        if sam_seed is not None:
            torch.manual_seed(int(sam_seed))
        return build_sam(sam_name, checkpoint=sam_ckpt, device=device)

    ext = dict(cfg.get("external") or {})
    detections = ext.pop("detections", None)
    mask_source = build_mask_source(cfg["masks"], sam_factory=sam_factory, dataset=source.dataset,
                                    detections=detections, sam_kwargs=sam_cfg, external_kwargs=ext, selection=sel)
    flt = cfg.get("filter", {})
    nouns = build_noun_extractor(flt.get("nouns", "auto"), bool(flt.get("keep_modifiers", True)))
    try:
        spatial = SpatialConfig(**(cfg.get("spatial") or {}))
    except (TypeError, ValueError) as exc:
        raise GenerateConfigError(f"spatial: {exc}") from exc
    return PseudoLabelPipeline(mask_source, captioner, scorer, nouns,
                               score_transform=flt.get("score_transform", "logit"), seed=int(cfg.get("seed", 0)),
                               spatial=spatial)


def weights_identity(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Content digests of the weight files a generation run reads (captioner, scorer, SAM when masks need it).

    A name such as ``pretrained=shipped`` stays the same when the shipped file is replaced; the digest does not, so
    new weights get a new default store and a store made with other weights is not resumed with these."""
    gen = cfg["generator"]
    named = {"coca": (gen["captioner"].get("pretrained"), "coca"),
             "scorer": ((gen.get("scorer") or {}).get("pretrained"), "clip")}
    if cfg.get("masks") in ("sam", "external"):
        named["sam"] = ((cfg.get("sam") or {}).get("checkpoint"), "sam")
    out = {}
    for kind, (given, shipped_kind) in named.items():
        try:
            value = resolve_weights(given, shipped_kind)
        except (KeyError, PseudoRISError):  # shipped weights missing: validation names them later
            continue
        if value not in (None, "") and _weights_path(value) and Path(str(value)).expanduser().is_file():
            out[kind] = file_digest(Path(str(value)).expanduser())[:16]
    return out


def run_meta(cfg: Mapping[str, Any], source: ImageSource) -> dict[str, Any]:
    """What must not change when a store is resumed (else rows of two setups would mix)."""
    gen = cfg["generator"]
    weights = weights_identity(cfg)
    return {"source": source.description, "image_dir": str(Path(source.image_dir).resolve()),
            "masks": cfg["masks"], "sam": {k: v for k, v in (cfg.get("sam") or {}).items()},
            "selection": cfg.get("selection"), "captioner": gen["captioner"], "scorer": gen["scorer"],
            "decoding": cfg.get("decoding"), "seed": cfg.get("seed", 0), "num_shards": int(cfg.get("num_shards", 1)),
            "nouns": {k: (cfg.get("filter") or {}).get(k) for k in ("nouns", "keep_modifiers")},
            # only when on: stores made before spatial phrases existed stay resumable
            **({"spatial": cfg["spatial"]} if (cfg.get("spatial") or {}).get("enabled") else {}),
            # only for weight files (stores made before weights were recorded stay resumable)
            **({"weights": weights} if weights else {})}


def policy_from_cfg(flt: Mapping[str, Any]) -> FilterPolicy:
    """The filter options of ``filter:`` that are `FilterPolicy` fields (the others, e.g. ``nouns``, configure the
    pipeline); derived from the dataclass so a new policy field needs no second list here."""
    keys = {f.name for f in fields(FilterPolicy)}
    return FilterPolicy(**{k: v for k, v in flt.items() if k in keys})


def _shard_items(cfg: Mapping[str, Any], source: ImageSource, shard: int, num_shards: int) -> list[Any]:
    items = source.shard(shard, num_shards)
    if cfg.get("max_images") is not None:
        items = items[: int(cfg["max_images"])]
    return items


def _weights_path(value: Any) -> bool:
    """Whether a ``pretrained`` / ``checkpoint`` value names a file (rather than an open_clip tag)."""
    text = str(value)
    return os.sep in text or text.startswith("~") or text.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def validate_generation(cfg: Mapping[str, Any], source: ImageSource) -> None:
    """Checks that need no model: weight files exist, the captioner is named, the source has images."""
    cap = cfg["generator"]["captioner"]
    pretrained = resolve_weights(cap.get("pretrained"), "coca")
    if pretrained not in (None, "") and _weights_path(pretrained):
        path = Path(str(pretrained)).expanduser()
        if not path.is_file():
            raise GenerateConfigError(f"CoCa weights file not found: {path} (generator.captioner.pretrained)")
    elif not cap.get("name"):
        raise GenerateConfigError("generator.captioner.name is empty: name an open_clip CoCa model or set "
                                  "generator.captioner.pretrained=<project checkpoint file>")
    sam = cfg.get("sam") or {}
    if sam.get("checkpoint") == "shipped" and sam.get("name", "tiny") != "tiny" and cfg["masks"] in ("sam", "external"):
        raise GenerateConfigError(f"sam.checkpoint=shipped is the tiny SynthRef SAM; sam.name={sam.get('name')} "
                                  "needs sam.checkpoint=<its weights file>")
    sam_ckpt = resolve_weights(sam.get("checkpoint"), "sam")
    if cfg["masks"] in ("sam", "external") and sam_ckpt not in (None, "") and not Path(str(sam_ckpt)).expanduser() \
            .is_file():
        raise GenerateConfigError(f"SAM checkpoint not found: {sam_ckpt} (sam.checkpoint)")
    if cfg.get("max_images") is not None and int(cfg["max_images"]) < 1:
        raise GenerateConfigError(f"max_images={cfg['max_images']} must be >= 1 (or null for all images)")
    if not source.items:
        raise GenerateConfigError(f"the image source has no images: {source.description} ({source.image_dir})")


class EmptyStageError(PseudoRISError):
    """A stage received nothing to work on (no masks, no captions, nothing kept): the run is not useful."""


def generate_stage(cfg: Mapping[str, Any], source: ImageSource, on_image: Any = None) -> RunStats:
    shard, num_shards = int(cfg.get("shard", 0)), int(cfg.get("num_shards", 1))
    if not 0 <= shard < num_shards:
        raise GenerateConfigError(f"shard={shard} must satisfy 0 <= shard < num_shards={num_shards}")
    meta = run_meta(cfg, source)
    check_meta(cfg["out_dir"], meta, write=False)  # a mismatched store fails before any model is built
    validate_generation(cfg, source)
    items = _shard_items(cfg, source, shard, num_shards)
    pipeline = build_pipeline(cfg, source)
    store = CandidateStore(cfg["out_dir"], shard, num_shards, meta=meta)  # meta.json only after a good start
    if any(store.recovered.values()):
        log.warning("recovered shard %d after an interruption: %s", shard, store.recovered)
    if not items:
        print(f"shard {shard} of {num_shards} has no images ({len(source.items)} images in the source)")
    stats = run_generation(items, pipeline, store, progress=bool(cfg.get("progress", True)), on_image=on_image,
                           total=len(items))
    if stats.processed and not stats.masks and not stats.unreadable:
        raise EmptyStageError(f"no masks on any of the {stats.processed} images of this run (masks={cfg['masks']}, "
                              f"sam.name={(cfg.get('sam') or {}).get('name')}): captioning and filtering received "
                              "nothing; lower sam.pred_iou_thresh / sam.stability_score_thresh or use trained "
                              "weights (the store is kept)")
    if stats.masks and not stats.candidates:
        raise EmptyStageError(f"{stats.masks} masks but no caption candidate (all captions empty): check the "
                              "captioner weights and decoding settings (the store is kept)")
    return stats


def filter_stage(cfg: Mapping[str, Any], source: ImageSource) -> dict[str, Any]:
    out_dir = Path(cfg["out_dir"])
    meta_path = out_dir / "meta.json"
    image_dir = json.loads(meta_path.read_text())["image_dir"] if meta_path.exists() else source.image_dir
    categories = list(source.dataset.categories.values()) if (source.dataset is not None and cfg["masks"] == "gt") \
        else None
    policy = policy_from_cfg(cfg.get("filter", {}))
    num_shards = int(cfg.get("num_shards", 1))
    expected = [len(_shard_items(cfg, source, i, num_shards)) for i in range(num_shards)]
    report = cfg.get("report") or {}
    result = filter_store(out_dir, policy, dataset_root=cfg["out_root"], dataset_name=cfg["name"],
                          image_dir=image_dir, categories=categories, num_shards=num_shards, expected=expected,
                          allow_partial=bool(cfg.get("allow_partial", False)),
                          sample_images=int(report.get("max_images", 20)),
                          extra_info={"out_dir": str(out_dir.resolve()), "source": source.description})
    summary = dict(result.summary)
    summary["source_images"] = len(source.items)
    summary["complete"] = not (summary["shards"]["missing"] or summary["shards"]["incomplete"])
    summary["dataset"] = str(Path(cfg["out_root"]) / cfg["name"])
    if report.get("enabled", True):
        path = write_gallery(out_dir / "report.html", result.images, result.candidates, image_dir,
                             max_images=int(report.get("max_images", 20)), summary=summary)
        summary["report"] = str(path)
    atomic_write_json(out_dir / "summary.json", summary, indent=2)
    if summary["candidates"] and not summary["kept"]:
        print(f"warning: the filter kept none of the {summary['candidates']} candidates (filter.threshold="
              f"{policy.threshold}, filter.fallback={policy.fallback}): the dataset {summary['dataset']} is empty",
              file=sys.stderr)
    return summary


def default_out_dir(cfg: Mapping[str, Any]) -> str:
    """``outputs/generate/<dataset>_<source>_<masks>_<captioner>_<n>shards_<hash>``: one folder per generation
    setup (the options and weight files that change the stored candidates), so different commands never share a
    store, while a re-filter (``filter.*``), more images (``max_images``) or another shard of the same setup land in
    the same one."""
    keyed = {k: cfg.get(k) for k in ("source", "dataset", "split", "data_root", "image_dir", "synthref", "masks",
                                     "sam", "selection", "external", "generator", "decoding", "seed", "num_shards")}
    keyed["nouns"] = {k: (cfg.get("filter") or {}).get(k) for k in ("nouns", "keep_modifiers")}
    weights = weights_identity(cfg)
    if weights:  # weight files by content (see weights_identity); open_clip tags keep their old folders
        keyed["weights"] = weights
    digest = hashlib.sha1(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:8]
    dataset = cfg["dataset"]["name"] if isinstance(cfg["dataset"], Mapping) else str(cfg["dataset"])
    cap = cfg["generator"]["captioner"]
    cap_name = cap.get("name") or Path(str(cap.get("pretrained") or "coca")).stem
    n = int(cfg.get("num_shards", 1))
    return str(Path("outputs") / "generate" / f"{dataset}_{cfg['source']}_{cfg['masks']}_{cap_name}_{n}shards_{digest}")


def run(cfg: Any, on_image: Any = None) -> dict[str, Any]:
    """Run ``cfg['stage']`` (``all`` | ``generate`` | ``filter``); returns the summary dict."""
    cfg = _plain(cfg)
    check_generate_options(cfg)  # every option that needs no images or models, before anything is written
    torch.set_num_threads(int(cfg.get("threads", 1)))
    stage = cfg.get("stage", "all")
    if stage in ("all", "generate"):
        check_pretrained_tags(cfg)  # before any image is read or SynthRef is built
    if cfg.get("out_dir") in (None, "", "auto"):
        cfg["out_dir"] = default_out_dir(cfg)
    if cfg.get("out_root") in (None, ""):
        cfg["out_root"] = cfg["out_dir"]
    with contextlib.ExitStack() as stack:
        _lock_store(stack, cfg, stage)
        return _run_locked(cfg, stage, on_image)


def _lock_store(stack: contextlib.ExitStack, cfg: Mapping[str, Any], stage: str) -> None:
    """One writer per store: ``stage=generate`` shares ``<out_dir>/.lock`` with the other shards and holds its own
    shard's lock; ``all`` and ``filter`` (which read every shard and write the dataset) hold ``.lock`` alone."""
    out_dir = Path(cfg["out_dir"]).expanduser()
    purpose = "generate into (out_dir=...)"
    if stage == "generate":
        shard, num_shards = int(cfg.get("shard", 0)), int(cfg.get("num_shards", 1))
        stack.enter_context(directory_lock(out_dir, purpose=purpose, shared=True))
        stack.enter_context(directory_lock(out_dir, purpose=purpose, name=f".lock.shard{shard}of{num_shards}"))
    else:
        stack.enter_context(directory_lock(out_dir, purpose=purpose))


def _run_locked(cfg: dict[str, Any], stage: str, on_image: Any) -> dict[str, Any]:
    source = build_image_source(cfg)
    out: dict[str, Any] = {"out_dir": str(cfg["out_dir"])}
    num_shards = int(cfg.get("num_shards", 1))
    if stage in ("all", "generate"):
        stats = generate_stage(cfg, source, on_image=on_image)
        out.update({"run_processed": stats.processed, "run_skipped_done": stats.skipped_done,
                    "run_masks": stats.masks, "run_candidates": stats.candidates,
                    "run_seconds": round(stats.seconds, 2), "images_per_second": round(stats.images_per_second, 3),
                    "run_unreadable": [u["file_name"] for u in stats.unreadable]})
    if stage == "filter" or (stage == "all" and num_shards == 1):
        out.update(filter_stage(cfg, source))
    else:
        index = StoreIndex.build(cfg["out_dir"])
        out.update({"images": len(index), "candidates": sum(e[5] for e in index.entries),
                    "shards_present": len(index.pairs)})
        if stage == "all":  # the other shards may still run: merging now would filter a partial store
            print(f"shard {cfg.get('shard')} of {num_shards} done; when every shard is done, run the same command "
                  f"with stage=filter num_shards={num_shards} out_dir={cfg['out_dir']}")
    return out


def format_summary(summary: Mapping[str, Any]) -> str:
    keys = ["out_dir", "images", "images_ok", "images_no_masks", "images_unreadable", "masks", "masks_kept", "candidates",
            "kept", "median_doc", "geomean_doc", "geomean_doc_kept", "refs", "sentences", "run_processed", "run_skipped_done",
            "run_seconds", "images_per_second", "dataset", "report", "complete"]
    lines = [f"  {k}: {summary[k]}" for k in keys if k in summary]
    for u in summary.get("unreadable", []):
        lines.append(f"  unreadable: {u['file_name']} ({u['error']})")
    return "generation summary\n" + "\n".join(lines)
