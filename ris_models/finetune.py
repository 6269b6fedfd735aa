"""Start a new training run from the weights of a checkpoint (fine-tuning), as opposed to resuming one.

Resuming (Lightning's ``ckpt_path``) restores the optimizer, scheduler and loop counters and continues a run.
Fine-tuning (``init_from=<ckpt>``) only copies the network weights into the freshly built model, then training
starts at step 0 with a fresh optimizer and schedule. A checkpoint written by ``tools/import_checkpoint.py`` holds
weights only, so given as ``ckpt_path`` it is fine-tuned from as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ris_models.lit_module import CheckpointError, RISLitModule, read_checkpoint


def has_training_state(checkpoint: dict[str, Any]) -> bool:
    """Whether a checkpoint can be resumed (it carries optimizer and loop state), not only initialised from."""
    return "optimizer_states" in checkpoint and "loops" in checkpoint


def split_resume_and_init(ckpt_path: str | None, init_from: str | None) -> tuple[str | None, str | None]:
    """(checkpoint to resume, checkpoint to initialise from): a weights-only ``ckpt_path`` becomes an init."""
    if ckpt_path and not init_from and not has_training_state(read_checkpoint(ckpt_path)):
        return None, str(ckpt_path)
    return ckpt_path, init_from


def read_init_checkpoint(path: str | Path, preset: str) -> dict[str, Any]:
    """Read ``init_from`` and check that it holds preset ``preset`` (early, before data or model are built)."""
    checkpoint = read_checkpoint(path)
    info = checkpoint["ris_model"]
    if info.get("name") != preset:
        raise CheckpointError(f"init_from={path} holds a {info.get('model_type')!r} model (preset "
                              f"{info.get('name')!r}) but the configured model is {preset!r}; pick "
                              f"model={info.get('name')} or another checkpoint")
    return checkpoint


def load_initial_weights(lit: RISLitModule, checkpoint: dict[str, Any], label: str) -> None:
    """Copy the network weights of ``checkpoint`` (see ``read_init_checkpoint``) into ``lit.model`` (strict).

    Options that do not change any tensor (e.g. the CRIS text length, the threshold) may differ, so official
    RefCOCO weights can be fine-tuned on RefCOCOg. Any missing, extra or reshaped tensor is a ``CheckpointError``
    naming it.
    """
    name = lit.model.config.get("name")
    state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    ours = lit.model.state_dict()
    problems = [f"shape of {k}: checkpoint {list(state[k].shape)} vs model {list(ours[k].shape)}"
                for k in sorted(set(state) & set(ours)) if state[k].shape != ours[k].shape]
    problems += [f"missing {k}" for k in sorted(set(ours) - set(state))]
    problems += [f"unexpected {k}" for k in sorted(set(state) - set(ours))]
    if problems:
        raise CheckpointError(f"init_from={label} does not fit the configured {name}: " + "; ".join(problems[:5]))
    lit.model.load_state_dict(state, strict=True)
