"""Resuming a training run from its output directory (``resume=auto``).

Rerunning the same ``tools/train.py`` command must not redo finished work: a run that was killed continues from its
``last.ckpt``, and a finished run goes straight to evaluation (so the cached main job takes about a minute, not a
training's worth). Resuming is only safe when the directory holds a run of the *same* experiment, so the identity
of the run (every option that changes what is learnt) is recorded in ``<output_dir>/run_config.json`` and compared.
Options that may change between a run and its continuation (more epochs, evaluation settings, devices, logging) are
not part of the identity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_json
from pseudo_ris.data.plain import to_plain

RUN_CONFIG = "run_config.json"
RESUME_MODES = ("auto", "never")
#: top-level options that a continuation may change (they do not change the data, model or optimiser)
NOT_IDENTITY = frozenset({
    "ckpt_path", "resume", "epochs", "max_steps", "checkpoint_every_n_steps", "evaluate_after", "num_overlays",
    "limit_eval", "num_workers", "eval_batch_size", "threshold", "eval_resolution", "eval", "logger", "trainer",
    "output_dir", "cache_dir", "allow_download",
})


class RunConfigMismatch(PseudoRISError):
    """The output directory holds a run of a different experiment."""


def run_identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The options that define what a run learns (JSON-plain)."""
    return {k: v for k, v in to_plain(cfg).items() if k not in NOT_IDENTITY}


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return keys


def resume_checkpoint(cfg: Mapping[str, Any], output_dir: Path) -> str | None:
    """The checkpoint to resume from, after checking and recording the run's identity.

    An explicit ``ckpt_path`` wins. With ``resume=auto``, ``<output_dir>/checkpoints/last.ckpt`` of a run with the
    same identity is resumed; a different identity raises `RunConfigMismatch` naming the differing options.
    ``resume=never`` starts afresh (and records the new identity).
    """
    mode = str(cfg.get("resume", "auto"))
    if mode not in RESUME_MODES:
        raise RunConfigMismatch(f"resume={mode!r}; choose one of {RESUME_MODES}")
    identity = json.loads(json.dumps(run_identity(cfg), default=str))
    record = output_dir / RUN_CONFIG
    last = output_dir / "checkpoints" / "last.ckpt"
    explicit = cfg.get("ckpt_path")
    chosen: str | None = str(explicit) if explicit else None
    if chosen is None and mode == "auto" and last.is_file():
        if record.is_file():
            try:
                previous = json.loads(record.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise RunConfigMismatch(f"{record}: unreadable run record ({exc}); pass resume=never to start "
                                        "afresh in this directory") from exc
            changed = _diff(previous, identity)
            if changed:
                raise RunConfigMismatch(
                    f"{output_dir} holds a run of a different experiment ({'; '.join(changed[:6])}"
                    f"{'; ...' if len(changed) > 6 else ''}). Choose another output_dir=..., or pass resume=never "
                    "to start afresh here")
            chosen = str(last)
        else:  # a run from before run records existed: resuming blindly could mix experiments
            raise RunConfigMismatch(f"{output_dir} holds {last} but no {RUN_CONFIG}; pass ckpt_path={last} to "
                                    "resume it, or resume=never to start afresh")
    atomic_write_json(record, identity, indent=2)
    return chosen
