"""The main job's pseudo-label stage: foundation models -> generation -> filtered dataset, cached by config.

``python tools/train.py data=pseudo`` with no ``pseudo_root`` runs the whole method on SynthRef. This module is
the glue: it takes the generation config (``conf/generate.yaml`` composed with the trainer's ``pseudo_generate``
overrides), points it at the trainer's SynthRef build and at the foundation weights (shipped, or retrained into
the cache), and runs it into ``<cache_dir>/pseudo/<key>``. The key hashes everything that changes the labels
(generation options, SynthRef build, the weight files' bytes), so a changed config yields new labels and an
unchanged one reuses them. Generation itself is resumable, so an interrupted first run continues where it stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from pseudo_ris.data.io import atomic_write_json, file_digest
from pseudo_ris.data.locks import file_lock

COMPLETE = "pseudo_labels_complete.json"
# options that do not change the labels (where and how verbosely they are made)
_NOT_IN_KEY = ("out_dir", "out_root", "progress", "threads", "device", "report", "stage", "shard", "num_shards",
               "cache_dir", "hydra")


def pseudo_label_key(gen_cfg: Mapping[str, Any]) -> str:
    """Cache key of a resolved generation config (weights are included by content digest)."""
    keyed = {k: v for k, v in gen_cfg.items() if k not in _NOT_IN_KEY}
    weights = {}
    sam_ckpt = gen_cfg.get("sam", {}).get("checkpoint")
    coca_ckpt = gen_cfg.get("generator", {}).get("captioner", {}).get("pretrained")
    for kind, path in (("sam", sam_ckpt), ("coca", coca_ckpt)):
        if path and Path(str(path)).is_file():
            weights[kind] = file_digest(path)
    blob = json.dumps({"cfg": keyed, "weights": weights}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def resolve_generation_config(gen_cfg: Mapping[str, Any], *, data_root: str | Path,
                              foundation: Mapping[str, str | Path]) -> dict[str, Any]:
    """The generation config for SynthRef's unlabelled pool under ``data_root`` with the given foundation weights."""
    cfg = copy.deepcopy(dict(gen_cfg))
    cfg["source"] = "synthref"
    cfg["data_root"] = str(data_root)
    cfg.setdefault("sam", {})["checkpoint"] = str(foundation["sam"])
    cfg.setdefault("generator", {}).setdefault("captioner", {})["pretrained"] = str(foundation["coca"])
    if uses_clip_standin(cfg):
        cfg["generator"]["scorer"]["pretrained"] = str(foundation["clip"])
    return cfg


def uses_clip_standin(gen_cfg: Mapping[str, Any]) -> bool:
    """Whether DoC is scored by the shipped SynthRef CLIP stand-in (then it is a foundation model of the run too)."""
    scorer = (gen_cfg.get("generator") or {}).get("scorer") or {}
    return scorer.get("name") == "clip_synthref" and str(scorer.get("pretrained")) == "shipped"


def ensure_pseudo_labels(gen_cfg: Mapping[str, Any], *, data_root: str | Path, cache_dir: str | Path,
                         foundation: Mapping[str, str | Path], progress: bool = True) -> Path:
    """Return a ``pseudo_root`` holding ``<name>/refs(pseudo).p``, generating it first if it is not cached."""
    from pseudo_ris.generation.runner import format_summary, run

    cfg = resolve_generation_config(gen_cfg, data_root=data_root, foundation=foundation)
    out = Path(cache_dir).expanduser() / "pseudo" / pseudo_label_key(cfg)
    out.mkdir(parents=True, exist_ok=True)
    # one generator at a time per key: DDP ranks (or two shells) started together wait for the first one
    with file_lock(out.parent / f"{out.name}.lock"):
        if (out / COMPLETE).is_file():
            print(f"[pseudo labels] reusing {out}")
            return out
        print(f"[pseudo labels] generating into {out} (resumable: rerun the same command to continue)")
        cfg.update(out_dir=str(out), out_root=str(out), stage="all", progress=progress)
        summary = run(cfg)
        print(format_summary(summary))
        atomic_write_json(out / COMPLETE, {"config": cfg, "summary": summary}, indent=2, default=str)
    return out
