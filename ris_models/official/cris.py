"""Official CRIS (CRIS.pytorch) checkpoints -> the state dict of our ``cris_r50`` / ``cris_r101`` presets.

The official training script saves ``{"epoch", "cur_iou", "best_iou", "prec", "state_dict", "optimizer",
"scheduler"}`` with the model wrapped in DistributedDataParallel, so every weight starts with ``module.``. The
network itself is ``backbone`` (OpenAI CLIP, whose attention pool carries CRIS's extra ``connect`` residual),
``neck`` (FPN), ``decoder`` and ``proj``; our modules hold the same tensors under the names below. The key names
and shapes were recorded from the official code (``tests/fixtures/official_cris_*_keys.json``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ris_models.official.common import CheckpointImportError, is_dropped, rename_prefixes, strip_prefix, tensor_dict

#: (official prefix, our prefix), first match wins: CLIP towers, then the 18 renamed head modules.
CRIS_RENAMES: tuple[tuple[str, str], ...] = (
    # CLIP image tower: the attention pool moves into our dense pool (the pool's residual sits beside it)
    ("backbone.visual.attnpool.connect", "image_encoder.dense_pool.connect"),
    ("backbone.visual.attnpool", "image_encoder.dense_pool.pool"),
    ("backbone.visual", "image_encoder.visual"),
    # CLIP text tower
    ("backbone.token_embedding", "text_encoder.token_embedding"),
    ("backbone.positional_embedding", "text_encoder.positional_embedding"),
    ("backbone.transformer", "text_encoder.transformer"),
    ("backbone.ln_final", "text_encoder.ln_final"),
    ("backbone.text_projection", "text_encoder.text_projection"),
    # text-gated FPN (13)
    ("neck.txt_proj", "neck.sentence_proj"),
    ("neck.f1_v_proj", "neck.v5_proj"),
    ("neck.norm_layer", "neck.gate_norm"),
    ("neck.f2_v_proj", "neck.v4_proj"),
    ("neck.f2_cat", "neck.merge4"),
    ("neck.f3_v_proj", "neck.v3_proj"),
    ("neck.f3_cat", "neck.merge3"),
    ("neck.f4_proj5", "neck.out5"),
    ("neck.f4_proj4", "neck.out4"),
    ("neck.f4_proj3", "neck.out3"),
    ("neck.aggr", "neck.aggregate"),
    ("neck.coordconv.0.conv1", "neck.coord.0.conv"),
    ("neck.coordconv", "neck.coord"),
    # projector (2)
    ("proj.vis", "projector.vis"),
    ("proj.txt", "projector.kernel"),
    ("decoder", "decoder"),
)
#: inside each decoder layer (3)
_DECODER_LAYER_RENAMES = {"self_attn_norm": "self_out_norm", "cross_attn_norm": "cross_out_norm",
                          "multihead_attn": "cross_attn"}
_DECODER_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.([^.]+)(\..*)$")


def official_state(obj: Any) -> dict[str, torch.Tensor]:
    """The network weights of an official CRIS file: its ``state_dict`` entry (or the file itself), unprefixed."""
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    return strip_prefix(tensor_dict(obj, "the CRIS checkpoint's state_dict"), "module.")


def our_key(key: str) -> str | None:
    """Our name for the official (unprefixed) key, or None for a key this importer does not know."""
    new = rename_prefixes(key, CRIS_RENAMES)
    if new is None:
        return None
    match = _DECODER_LAYER.match(new)
    if match:
        index, module, rest = match.groups()
        new = f"decoder.layers.{index}.{_DECODER_LAYER_RENAMES.get(module, module)}{rest}"
    return new


def convert_cris_state(obj: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official CRIS checkpoint (loaded object) -> (our state dict, official keys dropped on purpose).

    An official key that is neither mapped nor on the documented drop list raises ``CheckpointImportError``
    naming it and its shape; completeness and shapes against the model are checked by ``check_state_dict``.
    """
    state: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in official_state(obj).items():
        if is_dropped("cris", key):
            dropped.append(key)
            continue
        new = our_key(key)
        if new is None:
            raise CheckpointImportError(f"unknown official CRIS tensor {key} {list(tensor.shape)}: not mapped and "
                                        "not on the list of intentionally dropped tensors")
        state[new] = tensor
    return state, dropped
