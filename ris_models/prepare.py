"""Resolve where the training/evaluation data lives before anything is built.

``resolve_data(cfg)`` turns the Hydra config into concrete paths: an explicit ``data_root`` is used as is; for the
embedded SynthRef datasets with ``data_root=null`` the cached build under ``<cache_dir>/synthref/<config hash>`` is
returned (built on first use by ``pseudo_ris.synthref.ensure_synthref``). Real datasets (RefCOCO/+/g) cannot be
downloaded here, so they need ``data_root``. For ``data=pseudo|mixed`` on SynthRef with ``pseudo_root`` unset, the
main job makes the pseudo labels itself: foundation models (shipped, or retrained into the cache), then the
generation pipeline on SynthRef's unlabelled pool (``ris_models.pseudo_labels``), each stage cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.plain import to_plain

SYNTHREF_DATASETS = ("synthref", "synthref+", "synthrefg")


class DataRootError(PseudoRISError):
    """No usable data root for the configured dataset."""


@dataclass(frozen=True)
class ResolvedData:
    data_root: Path
    pseudo_root: Path | None


def _plain(node: Any) -> dict:
    return dict(to_plain(node)) if node is not None else {}


def synthref_root(cache_dir: str | Path, synthref_cfg: Mapping[str, Any] | None = None, progress: bool = True) -> Path:
    """The cached SynthRef build for ``synthref_cfg`` (``None`` values mean SynthRef's defaults)."""
    from pseudo_ris.synthref import ensure_synthref

    overrides = {k: v for k, v in _plain(synthref_cfg).items() if v is not None}
    return ensure_synthref(Path(cache_dir).expanduser() / "synthref", overrides, progress=progress)


def resolve_data(cfg: Mapping[str, Any], generate_cfg: Mapping[str, Any] | None = None) -> ResolvedData:
    """Concrete ``data_root`` / ``pseudo_root`` for a train/evaluate config (see module docstring).

    ``generate_cfg`` (the composed ``conf/generate.yaml``) enables automatic pseudo-label generation.
    """
    dataset = cfg["dataset"]["name"]
    data_root = cfg.get("data_root")
    if data_root is not None:
        root = Path(str(data_root)).expanduser()
        if not root.is_dir():
            raise DataRootError(f"data_root {root} does not exist (dataset {dataset!r})")
    elif dataset in SYNTHREF_DATASETS:
        root = synthref_root(cfg.get("cache_dir", "~/.cache/pseudo_ris"), cfg.get("synthref"))
    else:
        raise DataRootError(f"dataset {dataset!r} needs data_root=<dir holding {dataset}/ and images/> "
                            "(REFER layout; only SynthRef is generated automatically)")
    pseudo_root = cfg.get("pseudo_root")
    mode = (cfg.get("data") or {}).get("mode", "human")
    if pseudo_root is None and mode in ("pseudo", "mixed") and dataset in SYNTHREF_DATASETS \
            and generate_cfg is not None:
        return ResolvedData(root, auto_pseudo_root(cfg, root, generate_cfg))
    return ResolvedData(root, Path(str(pseudo_root)).expanduser() if pseudo_root is not None else None)


def auto_pseudo_root(cfg: Mapping[str, Any], data_root: Path, generate_cfg: Mapping[str, Any]) -> Path:
    """The main job's pseudo labels for SynthRef: foundation models, then generation (both cached)."""
    from pseudo_ris.foundation.registry import ensure_foundation_models
    from ris_models.pseudo_labels import ensure_pseudo_labels, uses_clip_standin

    cache_dir = Path(str(cfg.get("cache_dir", "~/.cache/pseudo_ris"))).expanduser()
    options = _plain(cfg.get("pseudo_labels"))
    gen_cfg = _plain(generate_cfg)
    # the pseudo-label generator's models: SAM, CoCa and, when it scores DoC, the CLIP stand-in
    kinds = ("sam", "coca", "clip") if uses_clip_standin(gen_cfg) else ("sam", "coca")
    foundation = ensure_foundation_models(cache_dir / "foundation", retrain=bool(options.get("retrain_foundation")),
                                          kinds=kinds)
    return ensure_pseudo_labels(gen_cfg, data_root=data_root, cache_dir=cache_dir, foundation=foundation)
