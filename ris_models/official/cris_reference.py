"""CRIS parity against the official code (CRIS.pytorch checkout), for maintainers: not used in training or CI.

Builds the official ``model.segmenter.CRIS`` with random weights (its CLIP comes from a TorchScript archive made
here, as OpenAI's ``RN50.pt`` would be; batch-norm statistics optionally randomised so that a misplaced norm shows),
writes them as the official trainer saves them, imports them through ``convert_cris_state`` into our preset and
compares tokens and logits on the same images and sentences (CPU, float32, eval mode).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import torch

from ris_models.official.common import (CheckpointImportError, check_state_dict, checkout_commit,
                                        save_state_as_torchscript)
from ris_models.official.cris import convert_cris_state

_ARCH = {"cris_r50": "RN50", "cris_r101": "RN101"}
SENTENCES = ("the man in a red shirt on the left holding an umbrella", "zebra",
             "the small brown dog sitting next to the woman wearing a long blue coat near the open door")


def _official_modules(root: Path) -> tuple[type, types.ModuleType]:
    """The official ``CRIS`` class and BPE tokenizer module, imported from the checkout ``root``."""
    if not (root / "model" / "segmenter.py").is_file():
        raise CheckpointImportError(f"cris_root={root} is not a CRIS.pytorch checkout (no model/segmenter.py)")
    if "loguru" not in sys.modules and importlib.util.find_spec("loguru") is None:  # logging only; not needed here
        sys.modules["loguru"] = types.SimpleNamespace(logger=types.SimpleNamespace(info=lambda *a, **k: None))
    sys.path.insert(0, str(root))
    try:
        segmenter = importlib.import_module("model.segmenter")
        spec = importlib.util.spec_from_file_location("cris_official_bpe", root / "utils" / "simple_tokenizer.py")
        bpe = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bpe)
    finally:
        sys.path.remove(str(root))
    return segmenter.CRIS, bpe


def _official_tokens(bpe: types.ModuleType, texts: tuple[str, ...], length: int) -> torch.Tensor:
    """utils/dataset.py ``tokenize(texts, length, truncate=True)``: <sot> words <eot>, cut with <eot> kept last."""
    tok = bpe.SimpleTokenizer()
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    out = torch.zeros(len(texts), length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [sot] + tok.encode(text) + [eot]
        if len(ids) > length:
            ids = ids[:length]
            ids[-1] = eot
        out[i, :len(ids)] = torch.tensor(ids)
    return out


def _config(root: Path, preset: str, clip_file: Path, word_len: int) -> argparse.Namespace:
    import yaml

    train = yaml.safe_load((root / "config" / "refcoco" / f"{preset}.yaml").read_text())["TRAIN"]
    return argparse.Namespace(**{**train, "clip_pretrain": str(clip_file), "word_len": word_len})


def _randomise_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Batch-norm affine and running statistics away from (1, 0, 0, 1), so every norm matters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def check_cris(root: str | Path, preset: str, size: int = 416, word_len: int = 17, seed: int = 0,
               dtype: torch.dtype = torch.float32, randomise_norms: bool = False) -> list[str]:
    """Official CRIS vs our ``preset`` at ``size`` px and ``word_len`` tokens; lines to print.

    ``randomise_norms``: batch-norm statistics drawn at random instead of the official initialisation (every norm
    then matters, and values grow). ``dtype=torch.float64`` runs both networks in double precision: what remains
    is a real difference, not float32 rounding.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the official code makes its position tables in the default dtype
    try:
        return _check_cris(root, preset, size, word_len, seed, randomise_norms)
    finally:
        torch.set_default_dtype(previous)


def _check_cris(root: str | Path, preset: str, size: int, word_len: int, seed: int,
                randomise_norms: bool) -> list[str]:
    import open_clip

    from ris_models.registry import build_model

    if preset not in _ARCH:
        raise CheckpointImportError(f"no CRIS parity check for {preset!r}; choose one of {sorted(_ARCH)}")
    root = Path(root).expanduser()
    official_cls, bpe = _official_modules(root)
    if torch.get_default_dtype() == torch.float64:  # the official LayerNorm casts to float32 (an fp16 guard)
        clip_module = sys.modules["model.clip"]
        clip_module.LayerNorm.forward = torch.nn.LayerNorm.forward
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    clip_state = open_clip.create_model(_ARCH[preset], pretrained=None).state_dict()
    clip_state = {k: v for k, v in clip_state.items() if not k.endswith("num_batches_tracked")}
    clip_state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77),
                      vocab_size=torch.tensor(clip_state["token_embedding.weight"].shape[0]))
    with tempfile.TemporaryDirectory() as tmp:
        archive = save_state_as_torchscript(clip_state, Path(tmp) / f"{_ARCH[preset]}.pt")
        official = official_cls(_config(root, preset, archive, word_len))
    dtype = torch.get_default_dtype()
    official = official.to(dtype)
    if randomise_norms:
        _randomise_norms(official, generator)
    official.eval()
    saved = {"epoch": 50, "state_dict": {f"module.{k}": v for k, v in official.state_dict().items()}}

    state, dropped = convert_cris_state(saved)
    ours = build_model(preset, load_pretrained=False, word_len=word_len).to(dtype).eval()
    check_state_dict(state, ours, f"official {preset}")
    ours.load_state_dict(state, strict=True)

    tokens = ours.tokenize(list(SENTENCES))
    reference_ids = _official_tokens(bpe, SENTENCES, word_len)
    images = torch.randn(len(SENTENCES), 3, size, size, generator=generator)
    with torch.no_grad():
        expected = official(images, reference_ids)
        got = ours(images, tokens["input_ids"], tokens["attention_mask"])
    same_tokens = torch.equal(tokens["input_ids"], reference_ids)
    diff = (got - expected).abs().max().item()
    init = "random batch-norm statistics" if randomise_norms else "official initialisation"
    return [f"{preset} vs CRIS.pytorch {checkout_commit(root)}: {size} px, {word_len} tokens, "
            f"{str(dtype).replace('torch.', '')}, {init}: {len(state)} of {len(saved['state_dict'])} "
            f"official tensors mapped (dropped: {', '.join(dropped)}); token ids equal: {same_tokens}; "
            f"logits {tuple(got.shape)} up to {expected.abs().max().item():.2f}, max |diff| {diff:.2e}"]


#: File of the recorded head fixture (under tests/fixtures/).
HEAD_FIXTURE = "cris_official_head.pt"
#: The tiny official CRIS head of the fixture: (channels, side) of C3 / C4 / the ResNet's last map, the attention
#: pool's table side and heads, the CLIP embedding (sentence feature, C5), FPN widths (the middle one is the
#: decoder width and the word width), decoder depth / heads / FFN width, and the number of words.
TINY_HEAD = {"batch": 2, "c3": (32, 24), "c4": (64, 12), "c5": (96, 6), "pool_spacial": 3, "pool_heads": 4,
             "embed": 64, "fpn_out": (32, 64, 64), "num_layers": 2, "num_head": 4, "dim_ffn": 64, "words": 6}


def _float16_exact(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Perturb every norm and bias away from its (1, 0) initialisation, randomise batch-norm statistics, and round
    all weights to float16-exact values (so the fixture stores them at half the size)."""
    _randomise_norms(module, generator)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
            p.copy_(p.half().float())
        for b in module.buffers():
            if b.is_floating_point():
                b.copy_(b.half().float())


@torch.no_grad()
def record_cris_head(root: str | Path, out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny official CRIS head (attention pool, FPN, decoder, projector) run on seeded inputs.

    The weights (official key names, float16), the inputs (float16-exact) and every module's output (float32) are
    stored; ``tests/test_cris_parity.py`` checks our modules against them without the official code. Recorded on
    one thread, as the tests run: the thread count changes how float32 sums are split, hence the last bits.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _record_cris_head(Path(root).expanduser(), Path(out_dir), seed)
    finally:
        torch.set_num_threads(threads)


def _record_cris_head(root: Path, out_dir: Path, seed: int) -> Path:
    from pseudo_ris.data.io import atomic_write_bytes

    _official_modules(root)  # puts the official ``model`` package into sys.modules
    clip, layers = sys.modules["model.clip"], sys.modules["model.layers"]
    t = TINY_HEAD
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    (c3, s3), (c4, s4), (c5, s5), embed = t["c3"], t["c4"], t["c5"], t["embed"]
    o3, o4, o5 = t["fpn_out"]
    head = torch.nn.ModuleDict({
        "pool": clip.AttentionPool2d(t["pool_spacial"], c5, t["pool_heads"], embed),
        "neck": layers.FPN(in_channels=[c3, c4, embed], out_channels=[o3, o4, o5]),
        "decoder": layers.TransformerDecoder(t["num_layers"], o4, t["num_head"], t["dim_ffn"], 0.1),
        "proj": layers.Projector(embed, o4 // 2, 3),
    })
    _float16_exact(head, generator)
    head.eval()
    b = t["batch"]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).half().float()

    inputs = {"c3": rand(b, c3, s3, s3), "c4": rand(b, c4, s4, s4), "c5": rand(b, c5, s5, s5),
              "sentence": rand(b, embed), "words": rand(b, t["words"], o4)}
    pad_mask = torch.zeros(b, t["words"], dtype=torch.bool)
    pad_mask[1, t["words"] - 2:] = True
    # the official forward: backbone.visual -> (C3, C4, attnpool(C5)); neck; decoder; reshape; proj
    v5 = head["pool"](inputs["c5"])
    fq = head["neck"]([inputs["c3"], inputs["c4"], v5], inputs["sentence"])
    bb, cc, hh, ww = fq.shape
    decoded = head["decoder"](fq, inputs["words"], pad_mask).reshape(bb, cc, hh, ww)
    logits = head["proj"](decoded, inputs["sentence"])
    prefixes = {"pool": "backbone.visual.attnpool", "neck": "neck", "decoder": "decoder", "proj": "proj"}
    state = {f"{prefixes[name]}.{k}": v.half() for name, module in head.items()
             for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    record = {"source": f"CRIS.pytorch {checkout_commit(root)}: model.clip.AttentionPool2d, model.layers.FPN, "
                        "TransformerDecoder, Projector (eval mode)",
              "config": dict(t), "state": state, "inputs": {k: v.half() for k, v in inputs.items()},
              "pad_mask": pad_mask,
              "outputs": {"pool": v5, "neck": fq, "decoder": decoded.contiguous(), "logits": logits}}
    import io

    buffer = io.BytesIO()
    torch.save(record, buffer)
    return atomic_write_bytes(out_dir / HEAD_FIXTURE, buffer.getvalue())
