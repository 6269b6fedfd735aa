"""The official LAVT-RIS code as a numerical reference, for maintainers (``tools/parity_check.py``; not run in CI).

Imports the model code of a LAVT-RIS checkout (github.com/yz93/LAVT-RIS) without its training dependencies: the
two modules it only needs for loading ImageNet weights (``mmcv`` through ``lib.mmcv_custom``, and ``mmseg``'s
logger) are replaced by empty stand-ins, since the models here are built with random initialisation. Then:

* ``check_lavt``: official ``lavt`` (Swin-B, window 12) + BERT-base, random init, mapped into ``lavt_swin_b``
  through ``convert_lavt_state``; prints the largest |difference| of each encoder stage and of the logits.
* ``record_lavt_fixtures``: writes the facts the tests check without the official code: the state-dict key names
  and shapes of the official ``lavt_swin_b`` (JSON), and the inputs, seeded weights and outputs of a tiny official
  two-stage backbone (window 12, 15x15 and 20x20 maps), module by module (a ``.pt`` of plain tensors).
"""

from __future__ import annotations

import contextlib
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ris_models.official.common import CheckpointImportError, check_state_dict, checkout_commit
from ris_models.official.lavt import convert_lavt_state

#: Files of the recorded fixtures (under tests/fixtures/).
KEYS_FIXTURE = "lavt_swin_b_official_keys.json"
MODULES_FIXTURE = "lavt_official_modules.pt"
#: The tiny official backbone of the module fixture: two stages at window 12, image sides giving 15x15 / 20x20.
TINY = dict(embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=12, num_heads_fusion=[1, 2])
TINY_SIZES = (60, 80)


@contextlib.contextmanager
def official_lavt(root: str | Path) -> Iterator[SimpleNamespace]:
    """Import LAVT-RIS's ``lib.segmentation`` and ``bert`` from ``root``; yields a namespace of the pieces used."""
    root = Path(root).expanduser().resolve()
    for rel in ("lib/backbone.py", "lib/segmentation.py", "bert/modeling_bert.py"):
        if not (root / rel).is_file():
            raise CheckpointImportError(f"{root} is not a LAVT-RIS checkout: {rel} is missing")
    stand_ins = {
        "lib.mmcv_custom": dict(load_checkpoint=lambda *a, **k: None),  # ImageNet loading only
        "mmseg": {},
        "mmseg.utils": dict(get_root_logger=lambda *a, **k: None),
    }
    saved = {name: sys.modules.get(name) for name in [*stand_ins, "lib", "bert"]}
    for name, attrs in stand_ins.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    sys.path.insert(0, str(root))
    try:
        import importlib

        backbone = importlib.import_module("lib.backbone")
        segmentation = importlib.import_module("lib.segmentation")
        modeling_bert = importlib.import_module("bert.modeling_bert")
        configuration_bert = importlib.import_module("bert.configuration_bert")
        yield SimpleNamespace(backbone=backbone, segmentation=segmentation, BertModel=modeling_bert.BertModel,
                              BertConfig=configuration_bert.BertConfig)
    finally:
        sys.path.remove(str(root))
        for name in list(sys.modules):
            if name.split(".")[0] in ("lib", "bert", "mmseg"):
                del sys.modules[name]
        for name, module in saved.items():
            if module is not None:
                sys.modules[name] = module


def build_official_swin_b(ref: SimpleNamespace, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Official ``lavt`` (Swin-B, window 12) and BERT-base without pooler, random init, eval mode."""
    torch.manual_seed(seed)
    args = SimpleNamespace(swin_type="base", window12=True, mha="", fusion_drop=0.0)
    with contextlib.redirect_stdout(sys.stderr):
        model = ref.segmentation.lavt(pretrained="", args=args)
    bert = ref.BertModel(ref.BertConfig())
    bert.pooler = None
    return model.eval(), bert.eval()


def build_ours_swin_b(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """``lavt_swin_b`` (random BERT-base config, shipped vocabulary) with ``state`` loaded strictly."""
    from ris_models.registry import build_model

    ours = build_model("lavt_swin_b", bert_path=None, vocab_file="synthref_wordpiece.txt", load_pretrained=False)
    check_state_dict(state, ours, "official LAVT (random init)")
    ours.load_state_dict(state, strict=True)
    return ours.eval()


def _inputs(size: int, seed: int, vocab: int = 30522) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(2, 3, size, size, generator=g)
    ids = torch.randint(1000, vocab, (2, 20), generator=g)
    mask = torch.zeros(2, 20, dtype=torch.long)
    mask[0, :20] = 1
    mask[1, :7] = 1
    ids = ids * mask
    return images, ids, mask


@torch.no_grad()
def check_lavt(root: str | Path, size: int = 480, seed: int = 0, dtype: str = "float32") -> list[str]:
    """Max |official - ours| per encoder stage, for the stride-4 logits and the full-size logits (argmax too).

    ``dtype="float64"`` runs both models in double precision: differences that are float32 rounding vanish there.
    """
    if dtype not in ("float32", "float64"):
        raise CheckpointImportError(f"lavt_dtype={dtype!r}; choose float32 or float64")
    with official_lavt(root) as ref:
        model, bert = build_official_swin_b(ref, seed)
    state, dropped = convert_lavt_state({"model": model.state_dict(), "bert_model": bert.state_dict()})
    ours = build_ours_swin_b(state)
    images, ids, mask = _inputs(size, seed)
    if dtype == "float64":
        model, bert, ours, images = model.double(), bert.double(), ours.double(), images.double()
    words = bert(ids, attention_mask=mask)[0]
    feats = model.backbone(images, words.permute(0, 2, 1), mask.unsqueeze(-1))
    low = model.classifier(*reversed(feats))
    full = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=True)
    our_words = ours.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    our_feats = ours.encoder(images, our_words, mask)
    our_low = ours.decoder(our_feats)
    our_full = F.interpolate(our_low, size=(size, size), mode="bilinear", align_corners=True)
    lines = [f"LAVT-RIS {checkout_commit(root)} vs lavt_swin_b at {size} px (CPU {dtype}, random init, batch 2; "
             f"{len(state)} tensors mapped, {len(dropped)} dropped)",
             f"  BERT words          max|diff| {(words - our_words).abs().max().item():.3g}"]
    for i, (a, b) in enumerate(zip(feats, our_feats)):
        lines.append(f"  stage {i + 1} {tuple(a.shape[1:])!s:17} max|diff| {(a - b).abs().max().item():.3g} "
                     f"(max|value| {a.abs().max().item():.3g})")
    agree = (full.argmax(1) == our_full.argmax(1)).float().mean().item()
    lines.append(f"  logits stride 4     max|diff| {(low - our_low).abs().max().item():.3g}")
    lines.append(f"  logits {size} px      max|diff| {(full - our_full).abs().max().item():.3g}, "
                 f"argmax agrees on {100 * agree:.4f} % of pixels")
    return lines


@torch.no_grad()
def record_lavt_fixtures(root: str | Path, out_dir: Path, seed: int = 0) -> list[Path]:
    """Write the key/shape JSON of the official Swin-B model and the tiny module-by-module reference."""
    from pseudo_ris.data.io import atomic_write_bytes, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    with official_lavt(root) as ref:
        model, bert = build_official_swin_b(ref, seed)
        keys = {"source": f"LAVT-RIS {checkout_commit(root)}: lib.segmentation.lavt(swin_type='base', window12=True) "
                          "state_dict() as 'model', BERT-base (bert.modeling_bert, pooler=None) as 'bert_model'",
                "model": {k: list(v.shape) for k, v in model.state_dict().items()},
                "bert_model": {k: list(v.shape) for k, v in bert.state_dict().items()}}
        tiny = _record_tiny(ref, seed)
    keys_path = atomic_write_text(out_dir / KEYS_FIXTURE, json.dumps(keys, indent=0) + "\n")
    import io

    buffer = io.BytesIO()
    torch.save(tiny, buffer)
    return [keys_path, atomic_write_bytes(out_dir / MODULES_FIXTURE, buffer.getvalue())]


def _record_tiny(ref: SimpleNamespace, seed: int) -> dict[str, Any]:
    """A tiny official backbone run at two sizes, with every block's / fusion's / merge's input and output captured.

    Weights and inputs are float16-exact (stored as float16), activations float32; tensors passed on unchanged
    (a block's output is the next block's input) are the same objects, which ``torch.save`` stores once."""
    torch.manual_seed(seed)
    backbone = ref.backbone.MultiModalSwinTransformer(
        embed_dim=TINY["embed_dim"], depths=TINY["depths"], num_heads=TINY["num_heads"],
        window_size=TINY["window_size"], drop_path_rate=0.3, out_indices=(0, 1),
        num_heads_fusion=TINY["num_heads_fusion"])
    backbone.init_weights()
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if name.endswith("bias") or "norm" in name:  # the official init leaves these at 0 / 1: make them count
                p.add_(0.1 * torch.randn_like(p))
            p.copy_(p.half().float())  # float16-exact values, so the fixture stores weights at half the size
    backbone.eval()
    state = {k: v.half() for k, v in backbone.state_dict().items() if not k.endswith("relative_position_index")}
    index = backbone.layers[0].blocks[0].attn.relative_position_index
    record: dict[str, Any] = {"source": "LAVT-RIS lib.backbone.MultiModalSwinTransformer", "config": dict(TINY),
                              "state": state, "relative_position_index": index.to(torch.int16), "cases": []}
    for size in TINY_SIZES:
        captured: dict[str, Any] = {"blocks": [], "fusions": [], "merges": []}
        hooks = []
        for i, layer in enumerate(backbone.layers):
            for j, block in enumerate(layer.blocks):
                hooks.append(block.register_forward_hook(
                    lambda mod, args, out, i=i, j=j: captured["blocks"].append(
                        {"stage": i, "block": j, "hw": [mod.H, mod.W], "input": args[0], "output": out})))
            hooks.append(layer.fusion.register_forward_hook(
                lambda mod, args, out, i=i: captured["fusions"].append(
                    {"stage": i, "input": args[0], "output": out})))
            if layer.downsample is not None:  # its input is the gated stage output
                hooks.append(layer.downsample.register_forward_hook(
                    lambda mod, args, out, i=i: captured["merges"].append(
                        {"stage": i, "input": args[0], "output": out})))
        g = torch.Generator().manual_seed(seed + size)
        image = torch.randn(1, 3, size, size, generator=g).half().float()
        words = torch.randn(1, 5, 768, generator=g).half().float()
        mask = torch.tensor([[1, 1, 1, 1, 0]])
        outs = backbone(image, words.permute(0, 2, 1), mask.unsqueeze(-1))
        for h in hooks:
            h.remove()
        record["cases"].append({"size": size, "image": image.half(), "words": words.half(), "mask": mask,
                                "outs": list(outs), **captured})
    return record
