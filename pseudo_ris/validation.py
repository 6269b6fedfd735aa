"""Checks of option values that need no data, run by every tool before it builds or generates anything.

A bad value found after minutes of label generation (or as a traceback mid-epoch) wastes the user's time; these
checks run first and raise `OptionError` with a one-line message naming the option and the accepted values.
``ris_models.validation`` adds the training / evaluation options on top of the generic checks here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from pseudo_ris.data.errors import PseudoRISError


class OptionError(PseudoRISError):
    """An option value that is refused before any work starts."""


_NUMBER_TYPES = (int, float)


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER_TYPES) and not isinstance(value, bool)


def check_int(value: Any, option: str, *, minimum: int | None = None, maximum: int | None = None,
              allow_none: bool = False, extra: Iterable[Any] = ()) -> Any:
    """An integer in ``[minimum, maximum]`` (``None`` if allowed, or one of the special values ``extra``)."""
    if value is None and allow_none:
        return None
    if value in tuple(extra):
        return value
    if not (_is_number(value) and float(value).is_integer()):
        raise OptionError(f"{option} must be an integer, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else (f"<= {maximum}" if minimum is None
                                                           else f"in [{minimum}, {maximum}]")
        special = f" (or {', '.join(map(repr, extra))})" if tuple(extra) else ""
        raise OptionError(f"{option} must be {bounds}{special}, got {value}")
    return value


def check_number(value: Any, option: str, *, minimum: float | None = None, maximum: float | None = None,
                 exclusive_minimum: bool = False, allow_none: bool = False, why: str = "") -> float | None:
    """A finite number in ``[minimum, maximum]`` (``(minimum, maximum]`` with ``exclusive_minimum``)."""
    if value is None and allow_none:
        return None
    if not _is_number(value) or not math.isfinite(float(value)):
        raise OptionError(f"{option} must be a finite number, got {value!r}")
    value = float(value)
    low_bad = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    if low_bad or (maximum is not None and value > maximum):
        low = "" if minimum is None else (f"> {minimum:g}" if exclusive_minimum else f">= {minimum:g}")
        high = "" if maximum is None else f"<= {maximum:g}"
        raise OptionError(f"{option} must be {' and '.join(b for b in (low, high) if b)}, got {value:g}"
                          f"{'; ' + why if why else ''}")
    return value


def check_choice(value: Any, option: str, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        raise OptionError(f"{option}={value!r} is not one of {', '.join(map(str, choices))}")
    return value


def check_writable_dir(path: str | os.PathLike, option: str) -> Path:
    """``path`` is (or can be created as) a writable directory; nothing is created here."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OptionError(f"{option}={path} cannot be a directory: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == path else f"cannot be created ({probe} is not writable)"
        raise OptionError(f"{option}={path} {what}")
    return path


def check_readable_file(path: str | os.PathLike, option: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise OptionError(f"{option}={path}: file not found")
    if not path.is_file():
        raise OptionError(f"{option}={path} is not a file")
    if not os.access(path, os.R_OK):
        raise OptionError(f"{option}={path} is not readable")
    return path


def check_existing_dir(path: str | os.PathLike, option: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise OptionError(f"{option}={path}: directory not found")
    return path


def check_device(device: Any, option: str = "device") -> str:
    """``cpu``, ``cuda`` or ``cuda:<i>``; CUDA only where torch sees a GPU."""
    device = str(device)
    if device == "cpu":
        return device
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise OptionError(f"{option}={device!r} is not one of cpu, cuda, cuda:<index>")
    import torch

    if not torch.cuda.is_available():
        raise OptionError(f"{option}={device} needs a CUDA GPU, and torch sees none on this machine; use {option}=cpu")
    if ":" in device and int(device[5:]) >= torch.cuda.device_count():
        raise OptionError(f"{option}={device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = cfg.get(key)
    return value if isinstance(value, Mapping) else {}


def check_weights_path(value: Any, option: str, shipped_ok: bool = True) -> None:
    """A weights option that is null, ``shipped``, or an existing readable file."""
    if value in (None, "") or (shipped_ok and value == "shipped"):
        return
    check_readable_file(value, option)


def check_generate_options(cfg: Mapping[str, Any]) -> None:
    """Every ``conf/generate.yaml`` option that can be checked without images or models."""
    from pseudo_ris.filtering.doc import FALLBACKS, SCORE_TRANSFORMS, SINGLE_MASK_POLICIES
    from pseudo_ris.masks.sam import SAM_CONFIGS

    stage = check_choice(cfg.get("stage", "all"), "stage", ("all", "generate", "filter"))
    check_choice(cfg.get("source", "synthref"), "source", ("synthref", "refer", "folder"))
    masks = check_choice(cfg.get("masks", "sam"), "masks", ("sam", "gt", "external"))
    num_shards = check_int(cfg.get("num_shards", 1), "num_shards", minimum=1)
    check_int(cfg.get("shard", 0), "shard", minimum=0, maximum=num_shards - 1)
    check_int(cfg.get("max_images"), "max_images", minimum=1, allow_none=True)
    check_int(cfg.get("seed", 0), "seed")
    check_int(cfg.get("threads", 1), "threads", minimum=1)
    if stage != "filter":
        check_device(cfg.get("device", "cpu"))
    for key in ("data_root", "image_dir"):
        if cfg.get(key) is not None:
            check_existing_dir(cfg[key], key)
    for key in ("out_dir", "out_root"):
        if cfg.get(key) not in (None, "", "auto"):  # unset: a folder per setup under outputs/generate/
            check_writable_dir(cfg[key], key)

    sam = _section(cfg, "sam")
    if sam:
        check_choice(sam.get("name", "tiny"), "sam.name", sorted(SAM_CONFIGS))
        if masks != "gt":
            check_weights_path(sam.get("checkpoint"), "sam.checkpoint")
        for key in ("points_per_side", "points_per_batch"):
            if key in sam:
                check_int(sam[key], f"sam.{key}", minimum=1)
        for key in ("pred_iou_thresh", "stability_score_thresh"):  # a random-init SAM predicts any value
            if key in sam:
                check_number(sam[key], f"sam.{key}")
        if "box_nms_thresh" in sam:
            check_number(sam["box_nms_thresh"], "sam.box_nms_thresh", minimum=0.0, maximum=1.0)
        if "min_mask_region_area" in sam:
            check_int(sam["min_mask_region_area"], "sam.min_mask_region_area", minimum=0)
    sel = _section(cfg, "selection")
    if "min_area" in sel:
        check_number(sel["min_area"], "selection.min_area", minimum=0.0)
    for key in ("min_area_frac", "max_area_frac"):
        if key in sel:
            check_number(sel[key], f"selection.{key}", minimum=0.0, maximum=1.0)
    if "nms_iou" in sel:
        check_number(sel["nms_iou"], "selection.nms_iou", minimum=0.0, maximum=1.0, exclusive_minimum=True)
    if "max_masks" in sel:
        check_int(sel["max_masks"], "selection.max_masks", minimum=1)
    if masks == "external" and stage != "filter":
        ext = _section(cfg, "external")
        if not ext.get("detections"):
            raise OptionError("masks=external needs external.detections=<COCO results JSON>")
        check_readable_file(ext["detections"], "external.detections")

    dec = _section(cfg, "decoding")
    if "num_beams" in dec:
        check_int(dec["num_beams"], "decoding.num_beams", minimum=1)
    min_len = check_int(dec.get("min_len", 1), "decoding.min_len", minimum=1)
    if "max_len" in dec:
        check_int(dec["max_len"], "decoding.max_len", minimum=max(2, min_len))
    if "batch_size" in dec:
        check_int(dec["batch_size"], "decoding.batch_size", minimum=1)

    flt = _section(cfg, "filter")
    if "threshold" in flt:
        check_number(flt["threshold"], "filter.threshold", minimum=0.0, exclusive_minimum=True,
                     why="DoC and uniqueness are ratios of positive scores, so a threshold <= 0 would keep every "
                         "candidate (the paper keeps DoC > 1)")
    if "key" in flt:
        check_choice(flt["key"], "filter.key", ("doc", "uniqueness"))
    if "fallback" in flt:
        check_choice(flt["fallback"], "filter.fallback", FALLBACKS)
    if "single_mask" in flt:
        check_choice(flt["single_mask"], "filter.single_mask", SINGLE_MASK_POLICIES)
    if "score_transform" in flt:
        check_choice(flt["score_transform"], "filter.score_transform", SCORE_TRANSFORMS)
    for key in ("topk", "single_mask_topk"):
        if key in flt:
            check_int(flt[key], f"filter.{key}", minimum=1)
    if "nouns" in flt:
        check_choice(flt["nouns"], "filter.nouns", ("auto", "rule", "spacy"))

    cap = _section(_section(cfg, "generator"), "captioner")
    pretrained = cap.get("pretrained")
    if isinstance(pretrained, str) and (os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin",
                                                                                    ".safetensors"))):
        check_weights_path(pretrained, "generator.captioner.pretrained")
