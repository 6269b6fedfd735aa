"""One conversion from Hydra/OmegaConf configs to plain Python containers.

Library functions accept either a composed Hydra config or a plain dict (tests pass dicts); converting at the
boundary keeps hashing, pickling and ``dict`` operations identical for both.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def to_plain(cfg: Any) -> Any:
    """Resolved plain dict/list for an OmegaConf container; anything else is returned unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
