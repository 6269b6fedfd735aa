"""Import an official CRIS / LAVT checkpoint into a checkpoint of ours (evaluate it, or fine-tune from it).

The written file is a weights-only checkpoint in our format (``state_dict`` with the ``model.`` prefix of
``RISLitModule``, ``ris_model`` with the preset config, ``hyper_parameters``) plus an ``official_import`` record
(source, file name, SHA-256, dropped tensors). It has no optimizer or loop state, so ``tools/train.py`` starts a
new run from it (``init_from=``) instead of resuming it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ris_models.official.common import CheckpointImportError, check_state_dict, read_official_file
from ris_models.registry import MODEL_REGISTRY, RISModel, list_models

SOURCES = ("cris", "lavt")


@dataclass
class ImportReport:
    """What an import did: where it wrote, how many tensors it mapped, which official ones it left out."""

    out: Path
    preset: str
    source: str
    mapped: int
    dropped: list[str] = field(default_factory=list)


def converter(source: str) -> Callable[[Any], tuple[dict[str, torch.Tensor], list[str]]]:
    """``convert_<source>_state`` of ``ris_models.official.<source>`` (imported when needed)."""
    if source == "cris":
        from ris_models.official.cris import convert_cris_state

        return convert_cris_state
    if source == "lavt":
        from ris_models.official.lavt import convert_lavt_state

        return convert_lavt_state
    raise CheckpointImportError(f"source={source!r}; choose one of {SOURCES}")


def check_request(source: str, preset: str) -> None:
    """A known source and a preset of that source's architecture (before any file is read)."""
    if source not in SOURCES:
        raise CheckpointImportError(f"source={source!r}; choose one of {SOURCES}")
    if preset not in MODEL_REGISTRY:
        raise CheckpointImportError(f"unknown model preset {preset!r}; available: {', '.join(list_models())}")
    model_type = MODEL_REGISTRY[preset]["model_type"]
    if model_type != source:
        raise CheckpointImportError(f"model={preset} is a {model_type} preset; an official {source.upper()} "
                                    f"checkpoint needs a {source} preset")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_official_into(model: RISModel, source: str, path: str | Path) -> tuple[int, list[str]]:
    """Strictly load the official checkpoint ``path`` into ``model``; return (tensors mapped, dropped keys)."""
    path = Path(path).expanduser()
    state, dropped = converter(source)(read_official_file(path))
    check_state_dict(state, model, f"official {source.upper()} checkpoint {path}")
    model.load_state_dict(state, strict=True)
    return len(state), dropped


def import_official_checkpoint(source: str, model: RISModel, path: str | Path, out: str | Path,
                               data_info: dict[str, Any] | None = None) -> ImportReport:
    """Fill ``model`` (built from the preset, any weights) from the official file and write our checkpoint.

    ``data_info`` (e.g. ``{"dataset": "refcocog", "split_by": "umd"}``) tells ``tools/evaluate.py`` which
    dataset the weights belong to, as a checkpoint of our trainer does.
    """
    from pseudo_ris.data.io import atomic_write_bytes
    from ris_models.lit_module import RISLitModule

    path, out = Path(path).expanduser(), Path(out).expanduser()
    preset = str(model.config.get("name"))
    check_request(source, preset)
    mapped, dropped = load_official_into(model, source, path)
    lit = RISLitModule(model, data_info=data_info)
    checkpoint: dict[str, Any] = {
        "state_dict": {k: v.detach().cpu() for k, v in lit.state_dict().items()},
        "hyper_parameters": dict(lit.hparams),
        "official_import": {"source": source, "file": path.name, "sha256": _sha256(path), "mapped": mapped,
                            "dropped": list(dropped)},
    }
    lit.on_save_checkpoint(checkpoint)  # ris_model (preset config, vocabulary) and ris_data, as training writes
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    return ImportReport(out=out, preset=preset, source=source, mapped=mapped, dropped=list(dropped))
