"""Where foundation weights come from: shipped inside the package, or trained into a user cache on request.

The shipped files were trained once with the recipe recorded next to them (``recipe.json`` per model and
README.md); ``retrain=True`` reruns that recipe (or a given one) into ``<cache_dir>/<model>-<recipe hash>/``, so a
changed recipe never reuses stale weights and an interrupted run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.errors import PseudoRISError
from .config import ClipTrainConfig, CocaTrainConfig, SamTrainConfig, config_hash, make_config

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "assets" / "foundation"
SHIPPED_FILES = {"sam": "sam_tiny.pt", "coca": "coca_tiny.pt", "clip": "clip_synthref.pt"}


class MissingFoundationWeightsError(PseudoRISError):
    """The package was installed without its shipped foundation weights."""


def shipped_paths() -> dict[str, Path]:
    """Paths of the shipped weights (raises naming the missing file and the way out)."""
    paths = {k: SHIPPED_DIR / v for k, v in SHIPPED_FILES.items()}
    for kind, path in paths.items():
        if not path.is_file():
            raise MissingFoundationWeightsError(
                f"shipped {kind} weights not found at {path}; reinstall the package with its package data, or "
                "call ensure_foundation_models(cache_dir, retrain=True) to train them here")
    return paths


def shipped_recipe(kind: str) -> dict:
    """The training config the shipped weights were made with ({} when the record is missing)."""
    path = SHIPPED_DIR / f"{kind}_recipe.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("config", {})


def ensure_foundation_models(cache_dir: str | Path, retrain: bool = False, *, kinds: tuple[str, ...] | None = None,
                             sam: Any = None, coca: Any = None, clip: Any = None,
                             progress: bool = True) -> dict[str, Path]:
    """``{kind: path}`` for ``kinds`` (default: all of sam, coca, clip): shipped weights, or (``retrain``) weights
    trained into ``cache_dir``.

    ``sam`` / ``coca`` / ``clip`` are recipes (dataclass or mapping) used when retraining; by default the shipped
    recipe. A finished training directory is reused as is (its weights file exists), an unfinished one is resumed.
    """
    kinds = tuple(kinds or SHIPPED_FILES)
    unknown = sorted(set(kinds) - set(SHIPPED_FILES))
    if unknown:
        raise KeyError(f"unknown foundation model(s) {unknown}; known: {sorted(SHIPPED_FILES)}")
    if not retrain:
        paths = shipped_paths()
        return {kind: paths[kind] for kind in kinds}
    from . import train_clip, train_coca, train_sam

    recipes = {"sam": (SamTrainConfig, train_sam, sam), "coca": (CocaTrainConfig, train_coca, coca),
               "clip": (ClipTrainConfig, train_clip, clip)}
    cache_dir = Path(cache_dir)
    out: dict[str, Path] = {}
    for kind in kinds:
        cls, trainer, given = recipes[kind]
        recipe = make_config(cls, given if given is not None else (shipped_recipe(kind) or None))
        run_dir = cache_dir / f"{kind}-{config_hash(recipe)}"
        weights = finished_weights(run_dir)
        out[kind] = weights if weights is not None else trainer(recipe, out_dir=run_dir, progress=progress)
    return out


def finished_weights(run_dir: Path) -> Path | None:
    """The weights of a run that completed its schedule (per its recipe.json), else None (train or resume)."""
    record = run_dir / "recipe.json"
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    runs = data.get("runs") or [{}]
    target = runs[-1].get("schedule_steps", 1)
    stop_after = (data.get("config") or {}).get("stop_after")
    if stop_after is not None:  # a recipe that exports part-way through its schedule (e.g. the shipped CLIP)
        target = min(target, int(stop_after))
    complete = runs[-1].get("steps_done", 0) >= target
    weights = data.get("weights")
    return run_dir / weights if complete and weights and (run_dir / weights).is_file() else None
