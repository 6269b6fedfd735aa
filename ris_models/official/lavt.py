"""Official LAVT-RIS checkpoints -> the state dict of our LAVT presets (``lavt_swin_b`` and any preset of its shape).

An official file (``train.py`` of LAVT-RIS) is a dict with ``model`` (Swin + PWAMs + gates + decoder) and
``bert_model`` (BERT without pooler), plus optimiser state and ``args`` that are not weights. The mapping:

* ``backbone.layers.i.blocks.j.*`` -> ``encoder.stages.i.blocks.j.*`` (same names inside a block);
  ``backbone.layers.i.downsample.*`` -> ``encoder.stages.{i+1}.downsample.*`` (we merge patches at the start of a
  stage, the official code at the end of the previous one; the computation is the same);
* PWAM one-dimensional convolutions ``[C_out, C_in, 1]`` -> linear layers ``[C_out, C_in]``
  (``fusion.vis_project.0`` -> ``fusions.i.vis_project.0``, ``image_lang_att.f_query/f_key/f_value/W.0`` ->
  ``attention.query/key/value/out``, ``project_mm.0`` -> ``mm_project.0``); ``res_gate.0/.2`` -> ``gates.i.fc1/fc2``;
* ``backbone.norm{i}`` -> ``encoder.out_norms.i``; decoder ``conv1_4, bn1_4, conv2_4, bn2_4`` -> ``decoder.fuse3``
  (then ``_3`` -> ``fuse2``, ``_2`` -> ``fuse1``), ``conv1_1`` -> ``decoder.classifier``; ``bert_model.*`` ->
  ``text_encoder.*``.

Dropped on purpose (``ris_models.official.common.DROPPED_TENSORS``): the ``relative_position_index`` buffers
(checked equal to ours, then recomputed by the model) and the stage-4 language gate, whose output the official
code computes and never uses.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from ris_models.lavt.swin import original_swin_key, relative_position_index
from ris_models.official.common import CheckpointImportError, is_dropped, strip_prefix, tensor_dict

_DECODER = {"4": "fuse3", "3": "fuse2", "2": "fuse1"}
_PWAM = {
    "vis_project.0": "vis_project.0",
    "image_lang_att.f_query.0": "attention.query",
    "image_lang_att.f_key.0": "attention.key",
    "image_lang_att.f_value.0": "attention.value",
    "image_lang_att.W.0": "attention.out",
    "project_mm.0": "mm_project.0",
}
_FUSION = re.compile(r"backbone\.layers\.(\d+)\.fusion\.(.+)\.(weight|bias)")
_GATE = re.compile(r"backbone\.layers\.(\d+)\.res_gate\.([02])\.weight")
_OUT_NORM = re.compile(r"backbone\.norm(\d+)\.(weight|bias)")
_DEC = re.compile(r"classifier\.(conv|bn)([12])_([1234])\.(.+)")


def lavt_key(key: str) -> str | None:
    """Our key for the official ``model`` key ``key`` (without group prefix); None when it has no counterpart."""
    if key.startswith("backbone.") and (swin := original_swin_key(key[len("backbone."):])) is not None:
        return "encoder." + swin
    if (m := _FUSION.fullmatch(key)) and m[2] in _PWAM:
        return f"encoder.fusions.{m[1]}.{_PWAM[m[2]]}.{m[3]}"
    if m := _GATE.fullmatch(key):
        return f"encoder.gates.{m[1]}.fc{1 if m[2] == '0' else 2}.weight"
    if m := _OUT_NORM.fullmatch(key):
        return f"encoder.out_norms.{m[1]}.{m[2]}"
    if m := _DEC.fullmatch(key):
        kind, idx, level, rest = m[1], m[2], m[3], m[4]
        if level == "1":
            return f"decoder.classifier.{rest}" if kind == "conv" and idx == "1" else None
        return f"decoder.{_DECODER[level]}.{int(idx) - 1}.{0 if kind == 'conv' else 1}.{rest}"
    return None


def convert_lavt_state(obj: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an official LAVT checkpoint (``{'model': ..., 'bert_model': ..., ...}``) onto our keys.

    Returns ``(state, dropped)``: our state dict and the official ``model`` keys left out on purpose. Raises
    ``CheckpointImportError`` for a key with no counterpart that is not on the drop list, a PWAM weight that is
    not a one-dimensional convolution, or a ``relative_position_index`` that differs from the standard one. Shapes
    against a concrete preset are checked by ``ris_models.official.common.check_state_dict``.
    """
    if not isinstance(obj, Mapping) or "model" not in obj:
        raise CheckpointImportError("not an official LAVT checkpoint: no 'model' entry (expected the file written "
                                    "by LAVT-RIS's train.py, with 'model' and 'bert_model')")
    if "bert_model" not in obj:
        raise CheckpointImportError("official LAVT checkpoint has no 'bert_model' entry (LAVT-One checkpoints, "
                                    "with BERT inside 'model', are not supported)")
    state, dropped = convert_lavt_model(strip_prefix(tensor_dict(obj["model"], "LAVT checkpoint 'model'"), "module."))
    bert = strip_prefix(tensor_dict(obj["bert_model"], "LAVT checkpoint 'bert_model'"), "module.")
    for key, tensor in bert.items():
        state["text_encoder." + key] = tensor
    return state, dropped


def convert_lavt_model(model: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The ``model`` part of an official checkpoint (Swin, PWAMs, gates, decoder) -> ``(our state, dropped keys)``."""
    state: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in model.items():
        if is_dropped("lavt", key):
            if key.endswith("relative_position_index"):
                _check_index(key, tensor)
            dropped.append(key)
            continue
        ours = lavt_key(key)
        if ours is None:
            raise CheckpointImportError(f"official LAVT tensor {key} {list(tensor.shape)} has no counterpart in "
                                        "our LAVT model")
        if _FUSION.fullmatch(key) and key.endswith(".weight"):
            if tensor.dim() != 3 or tensor.shape[-1] != 1:
                raise CheckpointImportError(f"official LAVT tensor {key} has shape {list(tensor.shape)}; a "
                                            "one-dimensional convolution weight [C_out, C_in, 1] was expected")
            tensor = tensor[..., 0]
        state[ours] = tensor
    return state, dropped


def _check_index(key: str, tensor: torch.Tensor) -> None:
    """A dropped index buffer must be the standard one: we recompute it, so any other value would be lost."""
    window = int(round(tensor.shape[0] ** 0.5)) if tensor.dim() == 2 else 0
    if tensor.dim() != 2 or window * window != tensor.shape[0] or not torch.equal(
            tensor.long(), relative_position_index(window)):
        raise CheckpointImportError(f"official LAVT tensor {key} {list(tensor.shape)} is not the standard Swin "
                                    "relative-position index; it cannot be recomputed")
