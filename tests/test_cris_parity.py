"""CRIS's head against outputs recorded once from the official CRIS.pytorch code, without that code.

``fixtures/cris_official_head.pt`` holds a tiny official head (``model.clip.AttentionPool2d`` with CRIS's
``connect`` residual, ``model.layers.FPN``, ``TransformerDecoder`` and ``Projector``; seeded, float16-exact weights
under the official key names, randomised batch-norm statistics), its seeded inputs and the output of every module
in eval mode. The weights go through our importer's renames; our modules must reproduce each output to 1e-6, alone
(fed the recorded input) and chained as the model chains them. Re-record with
``python tools/parity_check.py cris_root=<CRIS.pytorch checkout> cris_record=tests/fixtures``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ris_models.cris.decoder import DynamicConvProjector, VLDecoder
from ris_models.cris.encoders import DenseAttentionPool
from ris_models.cris.neck import TextGatedFPN
from ris_models.official.cris import our_key

FIXTURE = Path(__file__).parent / "fixtures" / "cris_official_head.pt"
# float32 kernels differ between CPUs (AVX2 vs AVX-512 builds of the same torch) by a few units in the last place,
# which grow with the values' magnitude: the tolerance scales with the largest recorded value
TOL = 1e-6


@pytest.fixture(scope="module")
def recorded() -> dict:
    record = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    record["inputs"] = {k: v.float() for k, v in record["inputs"].items()}
    return record


@pytest.fixture(scope="module")
def head(recorded) -> dict[str, torch.nn.Module]:
    """Our pool, neck, decoder and projector at the fixture's sizes, loaded through the importer's renames."""
    from open_clip.modified_resnet import AttentionPool2d

    cfg = recorded["config"]
    (c3, _), (c4, _), (c5, _), embed = cfg["c3"], cfg["c4"], cfg["c5"], cfg["embed"]
    vis_dim = cfg["fpn_out"][1]
    modules = {
        "image_encoder.dense_pool.": DenseAttentionPool(AttentionPool2d(cfg["pool_spacial"], c5, cfg["pool_heads"],
                                                                        embed)),
        "neck.": TextGatedFPN((c3, c4, embed), cfg["fpn_out"]),
        "decoder.": VLDecoder(cfg["num_layers"], vis_dim, cfg["num_head"], cfg["dim_ffn"], 0.1),
        "projector.": DynamicConvProjector(embed, vis_dim),
    }
    ours = {our_key(k): v.float() for k, v in recorded["state"].items()}
    for prefix, module in modules.items():
        module.load_state_dict({k[len(prefix):]: v for k, v in ours.items() if k.startswith(prefix)}, strict=True)
        module.eval()
    return dict(zip(("pool", "neck", "decoder", "projector"), modules.values()))


def _check(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.shape == expected.shape, what
    diff = (got - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert diff <= TOL * scale, f"{what}: max |diff| {diff:.2e} (values up to {scale:.2f})"


def test_fixture_is_a_nontrivial_official_head(recorded):
    assert "CRIS.pytorch" in recorded["source"]
    assert recorded["pad_mask"].any() and not recorded["pad_mask"].all()
    logits = recorded["outputs"]["logits"]
    assert logits.shape == (2, 1, 48, 48) and logits.std() > 0.1  # a stride-4 map of varying logits


@torch.no_grad()
def test_modules_alone_match_official(recorded, head):
    x, out = recorded["inputs"], recorded["outputs"]
    _check(head["pool"](x["c5"]), out["pool"], "attention pool")
    _check(head["neck"]([x["c3"], x["c4"], out["pool"]], x["sentence"]), out["neck"], "FPN")
    _check(head["decoder"](out["neck"], x["words"], recorded["pad_mask"]), out["decoder"], "decoder")


@torch.no_grad()
def test_head_chained_matches_official(recorded, head):
    """As ``CRISModel.forward`` chains them: the projector gets our decoder's output, as it lies in memory."""
    x, out = recorded["inputs"], recorded["outputs"]
    v5 = head["pool"](x["c5"])
    fused = head["neck"]([x["c3"], x["c4"], v5], x["sentence"])
    decoded = head["decoder"](fused, x["words"], recorded["pad_mask"])
    _check(decoded, out["decoder"], "decoder")
    _check(head["projector"](decoded, x["sentence"]), out["logits"], "logits")


def _official_layer_order(layer, vis, txt, vis_pos, txt_pos, pad_mask):
    """The official decoder layer's computation (sequence-first, attention called with its defaults, i.e.
    ``need_weights=True``), written out with our layer's submodules; dropout is off in eval mode."""
    normed = layer.norm1(vis)
    vis = vis + layer.self_out_norm(layer.self_attn(normed + vis_pos, normed + vis_pos, normed)[0])
    normed = layer.norm2(vis)
    attended = layer.cross_attn(normed + vis_pos, txt + txt_pos, txt, key_padding_mask=pad_mask)[0]
    vis = vis + layer.cross_out_norm(attended)
    return vis + layer.ffn(layer.norm3(vis))


@torch.no_grad()
def test_decoder_layers_compute_in_the_official_order_bit_for_bit():
    """Same machine, same kernels: equal to the last bit (a fused attention kernel, ``need_weights=False``, is not)."""
    from ris_models.cris.decoder import sine_pos_1d, sine_pos_2d

    torch.manual_seed(0)
    decoder = VLDecoder(2, 64, 4, 128, 0.1).eval()
    vis, words = torch.randn(2, 64, 9, 9), torch.randn(2, 5, 64)
    pad_mask = torch.tensor([[False] * 5, [False, False, False, True, True]])
    x, txt = vis.flatten(2).permute(2, 0, 1), words.transpose(0, 1)
    vis_pos, txt_pos = sine_pos_2d(64, 9, 9)[:, None], sine_pos_1d(64, 5)[:, None]
    for layer in decoder.layers:
        x = _official_layer_order(layer, x, txt, vis_pos, txt_pos, pad_mask)
    expected = decoder.norm(x).permute(1, 2, 0).reshape(2, 64, 9, 9)
    assert torch.equal(decoder(vis, words, pad_mask), expected)


@torch.no_grad()
def test_projector_sees_the_decoder_map_as_a_plain_map(recorded, head):
    """The projector's result on the decoder's output equals its result on a contiguous copy: the map is not
    channels-last in memory (as a batch-first decoder leaves it), whose kernels round differently."""
    x, out = recorded["inputs"], recorded["outputs"]
    decoded = head["decoder"](out["neck"], x["words"], recorded["pad_mask"])
    assert torch.equal(head["projector"](decoded, x["sentence"]), head["projector"](decoded.contiguous(), x["sentence"]))
