"""Resuming a training run from its output directory (``resume=auto|extend|never``).

Rerunning the same ``tools/train.py`` command must not redo finished work and must not change a number: a run that
was killed continues from its ``last.ckpt`` exactly (see ``ris_models.resumable``), and a finished run goes straight
to evaluation without training again. Resuming is only safe when the directory holds a run of the *same*
experiment, so the identity of the run (every option that changes what is learnt, including the trainer's
precision, devices, accumulation, epochs and max_steps, and the content hashes of the shipped stand-in encoders a
``model.pretrained=true`` run starts from) is recorded in ``<output_dir>/run_config.json`` and
compared. Only options that cannot change the weights are left out: where and how much to log, evaluation
settings, checkpoint frequency and loader workers. ``resume=extend`` is the one explicit way to continue with
*more* epochs / max_steps. A finished run is marked by ``<output_dir>/finished.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_json
from pseudo_ris.data.locks import is_primary_process
from pseudo_ris.data.plain import to_plain
from ris_models.checkpoint_io import CheckpointReadError, load_checkpoint_file, previous_path
from ris_models.pretraining.shipped import standin_fingerprint

RUN_CONFIG = "run_config.json"
FINISHED = "finished.json"
RECORD_FORMAT = 2  # 1: records without trainer/epochs (runs that could not resume exactly)
RESUME_MODES = ("auto", "extend", "never")
#: top-level options that cannot change the weights (evaluation, logging, where files go, how often to save)
NOT_IDENTITY = frozenset({
    "ckpt_path", "resume", "checkpoint_every_n_steps", "evaluate_after", "num_overlays", "limit_eval", "num_workers",
    "eval_batch_size", "eval", "logger", "output_dir", "cache_dir", "allow_download",
    "threshold", "eval_resolution",  # top-level evaluation keys of records written before the ``eval`` group
})
#: trainer options that cannot change the weights
TRAINER_NOT_IDENTITY = frozenset({"enable_progress_bar", "progress_refresh_rate", "log_every_n_steps",
                                  "num_sanity_val_steps", "limit_test_batches"})
#: options ``resume=extend`` may raise
EXTENDABLE = ("epochs", "max_steps")


class RunConfigMismatch(PseudoRISError):
    """The output directory holds a run of a different experiment (or cannot be resumed)."""


@dataclass(frozen=True)
class ResumePlan:
    """What `train` does with ``output_dir``: resume from ``ckpt`` (None: from scratch), or only evaluate."""

    ckpt: str | None
    finished: bool
    note: str | None = None


def run_identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The options that define what a run learns (JSON-plain)."""
    plain = to_plain(cfg)
    identity = {k: v for k, v in plain.items() if k not in NOT_IDENTITY}
    if isinstance(identity.get("trainer"), Mapping):
        identity["trainer"] = {k: v for k, v in identity["trainer"].items() if k not in TRAINER_NOT_IDENTITY}
    identity["record_format"] = RECORD_FORMAT
    standins = standin_fingerprint(plain["model"]) if isinstance(plain.get("model"), Mapping) else None
    if standins:  # the files behind model.pretrained=true: retrained stand-ins make a different experiment
        identity["standin_weights"] = standins
    return json.loads(json.dumps(identity, default=str))


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return keys


def _limit(value: Any) -> float:
    """``epochs`` / ``max_steps`` as a bound (``-1`` / null max_steps: unbounded)."""
    if value is None:
        return math.inf
    value = float(value)
    return math.inf if value < 0 else value


def _changed_options(previous: Mapping[str, Any], identity: Mapping[str, Any], mode: str) -> list[str]:
    """Differences that forbid resuming (``extend``: larger epochs / max_steps are allowed)."""
    changed = []
    for line in _diff(previous, identity):
        key = line.split(":", 1)[0]
        if mode == "extend" and key in EXTENDABLE and _limit(identity.get(key)) >= _limit(previous.get(key)):
            continue
        changed.append(line)
    return changed


def readable_checkpoint(last: Path) -> tuple[Path, str | None]:
    """``last`` if it loads, else its kept previous version (with a note); raises if neither does."""
    try:
        load_checkpoint_file(last)
        return last, None
    except CheckpointReadError as exc:
        prev = previous_path(last)
        try:
            load_checkpoint_file(prev)
        except CheckpointReadError:
            raise CheckpointReadError(f"{exc}; no readable {prev.name} is kept either: rerun with resume=never to "
                                      "start afresh (it deletes the checkpoints), or pass ckpt_path=<another "
                                      "checkpoint>") from None
        return prev, f"{last} is unreadable ({exc}); resuming from the previous checkpoint {prev}"


def _discard_previous_run(output_dir: Path) -> None:
    ckpts = output_dir / "checkpoints"
    for name in ("last.ckpt", "last.prev.ckpt", "best.ckpt"):
        (ckpts / name).unlink(missing_ok=True)
    (output_dir / FINISHED).unlink(missing_ok=True)


def plan_resume(cfg: Mapping[str, Any], output_dir: Path) -> ResumePlan:
    """Check ``output_dir`` against this run's identity, record it, and say where training starts.

    * ``resume=auto``: a directory of the same experiment is continued from ``checkpoints/last.ckpt`` (a damaged
      one falls back to ``last.prev.ckpt``), or only re-evaluated when ``finished.json`` says it is done; a
      different identity raises `RunConfigMismatch` listing the differing options.
    * ``resume=extend``: like ``auto``, but ``epochs`` / ``max_steps`` may be raised; a finished run trains on.
    * ``resume=never``: the previous run's checkpoints are deleted and training starts afresh.
    * ``ckpt_path=<file>``: resume from that checkpoint instead of ``last.ckpt`` (same identity rules).
    """
    mode = str(cfg.get("resume", "auto"))
    if mode not in RESUME_MODES:
        raise RunConfigMismatch(f"resume={mode!r}; choose one of {RESUME_MODES}")
    identity = run_identity(cfg)
    record = output_dir / RUN_CONFIG
    last = output_dir / "checkpoints" / "last.ckpt"
    explicit = cfg.get("ckpt_path")
    if explicit:
        load_checkpoint_file(explicit)  # missing / truncated / foreign: fail before any data is prepared
    has_state = last.is_file() or previous_path(last).is_file()
    primary = is_primary_process()  # other DDP ranks read the directory as the primary left it
    if mode == "never":
        if primary:
            _discard_previous_run(output_dir)
            atomic_write_json(record, identity, indent=2)
        return ResumePlan(str(explicit) if explicit else None, False)
    previous = None
    if record.is_file():
        try:
            previous = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunConfigMismatch(f"{record}: unreadable run record ({exc}); pass resume=never to start "
                                    "afresh in this directory") from exc
    if previous is not None and (has_state or explicit):
        if previous.get("record_format") != RECORD_FORMAT:
            raise RunConfigMismatch(f"{output_dir} holds a run recorded by an older version, which cannot be "
                                    "resumed exactly; pass resume=never to start afresh here, or choose another "
                                    "output_dir=...")
        changed = _changed_options(previous, identity, mode)
        if changed:
            hint = " (resume=extend allows more epochs / max_steps)" if any(
                c.split(":", 1)[0] in EXTENDABLE for c in changed) and mode != "extend" else ""
            raise RunConfigMismatch(
                f"{output_dir} holds a run of a different experiment ({'; '.join(changed[:6])}"
                f"{'; ...' if len(changed) > 6 else ''}){hint}. Choose another output_dir=..., or pass "
                "resume=never to start afresh here")
    elif previous is None and has_state and not explicit:  # a run from before run records existed
        raise RunConfigMismatch(f"{output_dir} holds {last} but no {RUN_CONFIG}; pass resume=never to start "
                                "afresh here, or choose another output_dir=...")
    extended = previous is not None and previous != identity
    if primary:
        atomic_write_json(record, identity, indent=2)
    finished = (output_dir / FINISHED).is_file()
    if finished and extended:
        if primary:
            (output_dir / FINISHED).unlink()
        finished = False
    if finished and has_state:
        return ResumePlan(None, True)
    if explicit:
        return ResumePlan(str(explicit), False)
    if has_state:
        chosen, note = readable_checkpoint(last)
        return ResumePlan(str(chosen), False, note)
    return ResumePlan(None, False)


def mark_finished(output_dir: Path, info: Mapping[str, Any]) -> None:
    """Record that training of ``output_dir`` ended normally (a rerun only evaluates)."""
    atomic_write_json(output_dir / FINISHED, dict(info), indent=2)


def resume_checkpoint(cfg: Mapping[str, Any], output_dir: Path) -> str | None:
    """The checkpoint a (not finished) run resumes from; see `plan_resume`."""
    return plan_resume(cfg, output_dir).ckpt
