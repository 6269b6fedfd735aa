"""What every official-checkpoint importer shares: safe reading, the strict check, the list of dropped tensors.

An importer turns a file written by the authors' code (CRIS.pytorch, LAVT-RIS) into the state dict of one of our
presets. The contract is strict so that a silent partial load can never happen: every tensor of our model is
filled, no official tensor is left over unless it is on ``DROPPED_TENSORS`` (documented below, with the reason),
and every shape agrees. Anything else is a ``CheckpointImportError`` naming the tensor and both shapes.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from pseudo_ris.data.errors import PseudoRISError


class CheckpointImportError(PseudoRISError):
    """An official checkpoint that cannot be read, or does not map exactly onto the chosen preset."""


@dataclass(frozen=True)
class DroppedTensor:
    """Official tensors (an ``fnmatch`` pattern on the official key) that are deliberately not imported."""

    pattern: str
    reason: str


#: Official tensors an importer may leave out, per source; every other official tensor must be mapped.
DROPPED_TENSORS: dict[str, tuple[DroppedTensor, ...]] = {
    "cris": (
        DroppedTensor("backbone.logit_scale", "CLIP's contrastive temperature; CRIS never uses it"),
    ),
    "lavt": (
        DroppedTensor("*relative_position_index", "a constant index buffer, recomputed from the window size"),
        DroppedTensor("backbone.layers.3.res_gate.*",
                      "the stage-4 language gate: built by the official code but its output is never used"),
    ),
}

#: Classes besides tensors and containers that official files pickle: LAVT saves its argparse ``args``; a
#: ``MultiStepLR`` state (CRIS) holds its milestones in a ``Counter``. Both only hold plain values.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace, collections.Counter)


def is_dropped(source: str, key: str) -> bool:
    """Whether the official tensor ``key`` of ``source`` ("cris" | "lavt") is on the documented drop list."""
    return any(fnmatch.fnmatchcase(key, d.pattern) for d in DROPPED_TENSORS[source])


def read_official_file(path: str | Path) -> Any:
    """Load an official checkpoint without running code (``weights_only``; the ``SAFE_GLOBALS`` allow-list)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointImportError(f"official checkpoint {path} not found")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or pickles a class outside the allow-list
        raise CheckpointImportError(f"cannot read official checkpoint {path}: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def tensor_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """``obj`` as a flat ``{key: tensor}``; anything else is an error naming ``where`` it was expected."""
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointImportError(f"{where} is not a non-empty dict of tensors (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointImportError(f"{where} holds non-tensor entries, e.g. {bad[:3]}")
    return dict(obj)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` (e.g. DistributedDataParallel's ``module.``) when every key carries it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def rename_prefixes(key: str, renames: tuple[tuple[str, str], ...]) -> str | None:
    """The first matching ``(official prefix, our prefix)`` applied to ``key``; None when none matches."""
    for old, new in renames:
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return None


def checkout_commit(root: str | Path) -> str:
    """The checkout's commit (short), read from .git without running git; "unknown commit" otherwise."""
    git = Path(root) / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = git / head[5:]
            head = ref.read_text().strip() if ref.is_file() else _packed_ref(git, head[5:])
        return f"at {head[:7]}"
    except OSError:
        return "(unknown commit)"


def _packed_ref(git: Path, name: str) -> str:
    for line in (git / "packed-refs").read_text().splitlines():
        if line.endswith(" " + name):
            return line.split()[0]
    raise OSError(name)


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def check_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module, label: str) -> None:
    """Strict check of a converted state dict against ``model``: nothing missing, nothing extra, equal shapes.

    ``label`` names the source in messages (e.g. "official CRIS checkpoint x.pth"). The first problems are listed
    with the tensor name and both shapes, so a wrong preset or a wrong file is obvious from one line.
    """
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    extra = sorted(set(state) - set(ours))
    shapes = sorted(k for k in set(ours) & set(state) if tuple(ours[k].shape) != tuple(state[k].shape))
    problems = [f"shape of {k}: official {_shape(state[k])} vs ours {_shape(ours[k])}" for k in shapes]
    problems += [f"not filled: {k} {_shape(ours[k])}" for k in missing]
    problems += [f"unknown tensor: {k} {_shape(state[k])}" for k in extra]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointImportError(f"{label} does not fit {getattr(model, 'config', {}).get('name', 'the model')}: "
                                    + "; ".join(problems[:5]) + more)


def save_state_as_torchscript(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``state`` as a TorchScript archive whose ``state_dict()`` gives it back (an OpenAI-CLIP-like file).

    For tests and parity checks: OpenAI's ``RN50.pt`` is such an archive, and we have no real one here.
    """
    from pseudo_ris.data.io import atomic_write_bytes

    root = _Holder()
    for key, tensor in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not isinstance(getattr(module, name, None), nn.Module):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        if tensor.is_floating_point():
            module.register_parameter(leaf, nn.Parameter(tensor.detach().clone(), requires_grad=False))
        else:
            module.register_buffer(leaf, tensor.detach().clone())
    import io

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(root), buffer)
    return atomic_write_bytes(path, buffer.getvalue())


class _Holder(nn.Module):
    """A parameter container that TorchScript can compile (it needs a forward)."""

    def forward(self) -> int:
        return 0
