"""SynthRef generation config: every knob that changes the written bytes, and the cache key derived from it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from pseudo_ris.synthref.scene import SceneConfig

#: bump when generator code changes what it writes for the same config (invalidates every cached build)
GENERATOR_VERSION = 3  # 3: segmentations written as a list holding one RLE dict (REFER getMask reads it)

#: label splits of the unc-style datasets (synthref, synthref+); synthrefg (umd) merges testA+testB into "test"
DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.70, "val": 0.08, "testA": 0.06, "testB": 0.06,
                                             "unseen": 0.10}


#: keys of conf/synthref.yaml that steer the command line only (not part of the cache key)
CLI_ONLY_KEYS: tuple[str, ...] = ("root", "cached", "progress", "workers", "preview", "preview_count")


@dataclass
class SynthRefConfig:
    """SynthRef sizes and generation parameters (Hydra: ``conf/synthref.yaml``)."""

    seed: int = 0
    num_images: int = 1500              # labelled images shared by synthref / synthref+ / synthrefg
    pool_images: int = 1000             # unlabelled pool (synthref_pool) for pseudo-labelling
    scene: SceneConfig = field(default_factory=SceneConfig)
    held_out_shapes: tuple[str, ...] = ("hexagon",)   # never named in human train text, never a train target
    held_out_colours: tuple[str, ...] = ("pink",)
    split_fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLIT_FRACTIONS))
    max_refs_per_image: int = 4
    min_paraphrases: int = 2
    max_paraphrases: int = 3
    overspecify_rate: float = 0.15      # P(one more attribute than needed), as RefCOCO annotators do
    extra_relation_rate: float = 0.5    # synthrefg: P(add a true relation to an already unique description)
    png_compress_level: int = 6

    @classmethod
    def from_any(cls, cfg: "SynthRefConfig | Mapping[str, Any] | None", **overrides: Any) -> "SynthRefConfig":
        """Build from a dataclass, dict or DictConfig; unknown keys raise ``KeyError`` naming them."""
        if cfg is None:
            data: dict = {}
        elif isinstance(cfg, cls):
            data = cfg.to_dict()
        else:
            data = {k: v for k, v in (cfg.items() if hasattr(cfg, "items") else dict(cfg).items())}
        data.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise KeyError(f"unknown SynthRef config key(s) {unknown}; known: {sorted(known)}")
        out = dict(data)
        out["scene"] = SceneConfig.from_any(data.get("scene"))
        for key in ("held_out_shapes", "held_out_colours"):
            if key in out:
                out[key] = tuple(str(v) for v in out[key])
        if "split_fractions" in out:
            out["split_fractions"] = {str(k): float(v) for k, v in dict(out["split_fractions"]).items()}
        config = cls(**out)
        config.validate()
        return config

    @classmethod
    def from_cli(cls, cfg: Mapping[str, Any]) -> "SynthRefConfig":
        """From ``conf/synthref.yaml`` (a DictConfig or dict): drops the keys that only steer the CLI."""
        return cls.from_any({k: v for k, v in cfg.items() if k not in CLI_ONLY_KEYS})

    def validate(self) -> None:
        for s in self.held_out_shapes:
            if s not in self.scene.shapes:
                raise ValueError(f"held-out shape {s!r} is not one of scene.shapes {list(self.scene.shapes)}")
        for c in self.held_out_colours:
            if c not in self.scene.colours:
                raise ValueError(f"held-out colour {c!r} is not one of scene.colours {list(self.scene.colours)}")
        allowed = {"train", "val", "testA", "testB", "unseen"}
        bad = sorted(set(self.split_fractions) - allowed)
        if bad:
            raise ValueError(f"unknown split(s) {bad} in split_fractions; allowed: {sorted(allowed)}")
        if self.num_images < 0 or self.pool_images < 0:
            raise ValueError("num_images and pool_images must be >= 0")
        if self.split_fractions.get("unseen", 0) > 0 and not (self.held_out_shapes or self.held_out_colours):
            raise ValueError("split 'unseen' needs held-out concepts (held_out_shapes / held_out_colours)")
        if not 1 <= self.scene.min_objects <= self.scene.max_objects <= 99:
            raise ValueError("need 1 <= scene.min_objects <= scene.max_objects <= 99")
        if not 1 <= self.min_paraphrases <= self.max_paraphrases:
            raise ValueError("need 1 <= min_paraphrases <= max_paraphrases")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["scene"] = self.scene.to_dict()
        data["held_out_shapes"] = list(self.held_out_shapes)
        data["held_out_colours"] = list(self.held_out_colours)
        return data

    def cache_key(self) -> str:
        """Hash of everything that determines the output bytes (config + generator version)."""
        payload = json.dumps({"config": self.to_dict(), "generator_version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
