"""LAVT against facts recorded once from the official LAVT-RIS code (commit 1da0af9), without that code.

* ``fixtures/lavt_swin_b_official_keys.json``: key names and shapes of the official ``lavt_swin_b`` checkpoint
  (``model`` and ``bert_model``); a fake checkpoint of random tensors with those shapes must import strictly.
* ``fixtures/lavt_official_modules.pt``: a tiny official backbone (widths 16/32, window 12, seeded weights) run on
  60 and 80 px images (15x15 and 20x20 stage-1 maps, 8x8 and 10x10 stage-2 maps): the input and output of every
  Swin block, PWAM, gate + patch merging, and the stage outputs. Our modules must reproduce them to 1e-5.
Re-record both with ``python tools/parity_check.py lavt_root=<LAVT-RIS checkout> lavt_record=tests/fixtures``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ris_models.lavt.encoder import LanguageAwareSwin
from ris_models.lavt.pwam import PWAM, LanguageGate
from ris_models.lavt.swin import PatchMerging, SwinBlock, shift_mask
from ris_models.official.common import CheckpointImportError, check_state_dict
from ris_models.official.lavt import convert_lavt_model, convert_lavt_state

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-5


@pytest.fixture(scope="module")
def modules_fixture() -> dict:
    """Weights and inputs are stored as float16 (their values are float16-exact), activations as float32."""
    fixture = torch.load(FIXTURES / "lavt_official_modules.pt", map_location="cpu", weights_only=True)
    fixture["state"] = {k: v.float() for k, v in fixture["state"].items()}
    for case in fixture["cases"]:
        case["image"], case["words"] = case["image"].float(), case["words"].float()
    return fixture


@pytest.fixture(scope="module")
def tiny_state(modules_fixture) -> dict[str, torch.Tensor]:
    """The tiny official backbone mapped to our encoder's keys (its last-stage gate, unused, left out)."""
    official = {"backbone." + k: v for k, v in modules_fixture["state"].items() if not k.startswith("layers.1.res_gate")}
    official["backbone.layers.0.blocks.0.attn.relative_position_index"] = modules_fixture["relative_position_index"]
    state, dropped = convert_lavt_model(official)
    assert dropped == ["backbone.layers.0.blocks.0.attn.relative_position_index"]
    return {k[len("encoder."):]: v for k, v in state.items()}


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _tiny_encoder(cfg: dict, state: dict[str, torch.Tensor]) -> LanguageAwareSwin:
    enc = LanguageAwareSwin(lang_dim=768, embed_dim=cfg["embed_dim"], depths=cfg["depths"], num_heads=cfg["num_heads"],
                            window_size=cfg["window_size"], pwam_heads=cfg["num_heads_fusion"], drop_path_rate=0.3)
    enc.load_state_dict(state, strict=True)
    return enc.eval()


def _cases(fixture: dict, kind: str):
    return [(case["size"], item) for case in fixture["cases"] for item in case[kind]]


def test_fixture_covers_the_maps_where_timm_and_lavt_differ(modules_fixture):
    maps = {(c["size"], tuple(b["hw"])) for c in modules_fixture["cases"] for b in c["blocks"]}
    assert maps == {(60, (15, 15)), (60, (8, 8)), (80, (20, 20)), (80, (10, 10))}
    assert modules_fixture["config"]["window_size"] == 12


@torch.no_grad()
def test_swin_blocks_match_official(modules_fixture, tiny_state):
    cfg = modules_fixture["config"]
    worst = {}
    for size, rec in _cases(modules_fixture, "blocks"):
        stage, j = int(rec["stage"]), int(rec["block"])
        dim, (h, w), window = cfg["embed_dim"] * 2**stage, rec["hw"], cfg["window_size"]
        shift = 0 if j % 2 == 0 else window // 2
        block = SwinBlock(dim, cfg["num_heads"][stage], window, shift, drop_path=0.1).eval()
        block.load_state_dict(_sub(tiny_state, f"stages.{stage}.blocks.{j}."), strict=True)
        hp, wp = -(-h // window) * window, -(-w // window) * window
        out = block(rec["input"].reshape(1, h, w, dim), shift_mask(hp, wp, window, window // 2))
        worst[(size, stage, j)] = (out.reshape(rec["output"].shape) - rec["output"]).abs().max().item()
    assert max(worst.values()) < TOL, worst


@torch.no_grad()
def test_pwam_matches_official(modules_fixture, tiny_state):
    cfg = modules_fixture["config"]
    for case in modules_fixture["cases"]:
        for rec in case["fusions"]:
            stage = int(rec["stage"])
            dim = cfg["embed_dim"] * 2**stage
            pwam = PWAM(dim, 768, cfg["num_heads_fusion"][stage]).eval()
            pwam.load_state_dict(_sub(tiny_state, f"fusions.{stage}."), strict=True)
            out = pwam(rec["input"], case["words"], case["mask"])
            assert (out - rec["output"]).abs().max().item() < TOL, (case["size"], stage)


@torch.no_grad()
def test_gate_and_patch_merging_match_official(modules_fixture, tiny_state):
    """The gated stage output x + gate(PWAM(x)) is what the official patch merging receives."""
    cfg = modules_fixture["config"]
    for case in modules_fixture["cases"]:
        (fusion,), (merge,) = case["fusions"][:1], case["merges"]
        gate = LanguageGate(cfg["embed_dim"])
        gate.load_state_dict(_sub(tiny_state, "gates.0."), strict=True)
        gated = fusion["input"] + gate(fusion["output"])
        assert (gated - merge["input"]).abs().max().item() < TOL
        merging = PatchMerging(cfg["embed_dim"])
        merging.load_state_dict(_sub(tiny_state, "stages.1.downsample."), strict=True)
        side = case["size"] // 4
        out = merging(merge["input"].reshape(1, side, side, -1))
        assert (out.reshape(merge["output"].shape) - merge["output"]).abs().max().item() < TOL


@torch.no_grad()
def test_language_aware_swin_matches_official(modules_fixture, tiny_state):
    enc = _tiny_encoder(modules_fixture["config"], tiny_state)
    for case in modules_fixture["cases"]:
        outs = enc(case["image"], case["words"], case["mask"])
        assert len(outs) == len(case["outs"])
        for ours, ref in zip(outs, case["outs"]):
            assert ours.shape == ref.shape
            assert (ours - ref).abs().max().item() < TOL, case["size"]


def test_original_swin_checkpoint_loads_into_the_encoder(modules_fixture, tmp_path):
    """An ImageNet checkpoint in the original Swin layout (merging at the end of a stage) initialises the Swin part."""
    official = modules_fixture["state"]
    swin = {k: v for k, v in official.items() if k.startswith(("patch_embed.", "layers.")) and ".fusion." not in k
            and ".res_gate." not in k}
    swin["head.weight"] = torch.zeros(10, 32)
    swin["norm.weight"] = torch.ones(32)
    torch.save({"model": swin}, tmp_path / "swin.pth")
    cfg = modules_fixture["config"]
    enc = LanguageAwareSwin(lang_dim=768, embed_dim=16, depths=cfg["depths"], num_heads=cfg["num_heads"],
                            window_size=12, pretrained=str(tmp_path / "swin.pth"))
    assert torch.equal(enc.stages[1].downsample.reduction.weight, official["layers.0.downsample.reduction.weight"])
    assert torch.equal(enc.stages[1].blocks[1].attn.relative_position_bias_table,
                       official["layers.1.blocks.1.attn.relative_position_bias_table"])


# ---- the official lavt_swin_b checkpoint layout ------------------------------------------------------------------
# Tensors on the "meta" device: shapes without data, so the full Swin-B + BERT-base layout is checked in seconds.
def _fake_official(keys: dict, index: torch.Tensor) -> dict:
    """Data-less tensors of the recorded shapes; index buffers hold the official window-12 index."""
    out = {}
    for group in ("model", "bert_model"):
        out[group] = {}
        for k, shape in keys[group].items():
            if k.endswith("relative_position_index"):
                out[group][k] = index.clone()
            else:
                dtype = torch.long if k.endswith("num_batches_tracked") else torch.float32
                out[group][k] = torch.empty(shape, dtype=dtype, device="meta")
    out["epoch"], out["args"] = 39, {"swin_type": "base"}  # non-weight entries of the official file are ignored
    return out


@pytest.fixture(scope="module")
def swin_b_checkpoint(modules_fixture):
    keys = json.loads((FIXTURES / "lavt_swin_b_official_keys.json").read_text())
    return _fake_official(keys, modules_fixture["relative_position_index"].long())


def test_official_lavt_swin_b_checkpoint_imports_strictly(swin_b_checkpoint):
    from ris_models.registry import build_model

    with torch.device("meta"):
        swin_b = build_model("lavt_swin_b", bert_path=None, vocab_file="synthref_wordpiece.txt", load_pretrained=False)
    state, dropped = convert_lavt_state(swin_b_checkpoint)
    official = swin_b_checkpoint["model"]
    assert sorted(dropped) == sorted([k for k in official if k.endswith("relative_position_index")]
                                     + ["backbone.layers.3.res_gate.0.weight", "backbone.layers.3.res_gate.2.weight"])
    assert len(dropped) == 24 + 2 and len(state) == len(official) + len(swin_b_checkpoint["bert_model"]) - 26
    check_state_dict(state, swin_b, "fake official LAVT")
    swin_b.load_state_dict(state, strict=True, assign=True)
    # tensors of equal shape that a wrong mapping could swap, checked by identity (facts of the official code:
    # conv1_4/conv2_4 fuse stage 4 with stage 3 first; Swin merges patches at the end of the previous stage)
    pairs = {"classifier.conv2_4.weight": "decoder.fuse3.1.0.weight", "classifier.conv2_3.weight": "decoder.fuse2.1.0.weight",
             "classifier.bn1_2.running_var": "decoder.fuse1.0.1.running_var", "classifier.conv1_1.bias": "decoder.classifier.bias",
             "backbone.layers.0.downsample.reduction.weight": "encoder.stages.1.downsample.reduction.weight",
             "backbone.layers.2.res_gate.2.weight": "encoder.gates.2.fc2.weight",
             "backbone.layers.1.blocks.1.attn.qkv.weight": "encoder.stages.1.blocks.1.attn.qkv.weight",
             "backbone.norm3.weight": "encoder.out_norms.3.weight"}
    for theirs, ours in pairs.items():
        assert state[ours] is official[theirs], theirs
    assert state["encoder.fusions.1.attention.key.weight"].shape == (256, 768)  # [C, 768, 1] squeezed
    assert (state["text_encoder.encoder.layer.11.output.dense.weight"]
            is swin_b_checkpoint["bert_model"]["encoder.layer.11.output.dense.weight"])


def test_unknown_official_tensor_is_an_error_naming_it():
    with pytest.raises(CheckpointImportError, match=r"backbone\.layers\.0\.extra\.weight \[3, 4\]"):
        convert_lavt_state({"model": {"backbone.layers.0.extra.weight": torch.zeros(3, 4)},
                            "bert_model": {"embeddings.word_embeddings.weight": torch.zeros(2, 2)}})


def test_shape_mismatch_names_the_tensor_and_both_shapes(modules_fixture, tiny_state):
    enc = _tiny_encoder(modules_fixture["config"], tiny_state)
    bad = dict(tiny_state, **{"out_norms.0.weight": torch.ones(17)})
    with pytest.raises(CheckpointImportError, match=r"out_norms\.0\.weight: official \[17\] vs ours \[16\]"):
        check_state_dict(bad, enc, "test")


def test_pwam_weight_that_is_not_a_1d_convolution_is_refused():
    key = "backbone.layers.0.fusion.vis_project.0.weight"
    with pytest.raises(CheckpointImportError, match=r"vis_project\.0\.weight has shape \[4, 4\]"):
        convert_lavt_model({key: torch.zeros(4, 4)})


def test_nonstandard_relative_position_index_is_refused(modules_fixture):
    index = modules_fixture["relative_position_index"].long()
    index[0, 0] += 1
    with pytest.raises(CheckpointImportError, match="relative-position index"):
        convert_lavt_model({"backbone.layers.0.blocks.0.attn.relative_position_index": index})


def test_missing_bert_model_is_a_clear_error():
    with pytest.raises(CheckpointImportError, match="bert_model"):
        convert_lavt_state({"model": {"x": torch.zeros(1)}})


# ---- behaviour of the official training code ---------------------------------------------------------------------
def _vocab(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "circle", "left"]) + "\n")
    return path  # ids: [PAD] 0, [CLS] 2, [SEP] 3, red 5, circle 6, left 7


def test_lavt_cut_drops_sep_of_long_expressions_like_the_official_code(tmp_path):
    from ris_models.text import WordPieceTokenizer

    long_text = " ".join(["red", "circle", "left"] * 7)  # 21 pieces: [CLS] + the first 19 fill 20 tokens
    official = WordPieceTokenizer(_vocab(tmp_path), max_length=20, keep_sep=False)(["red circle", long_text])
    assert official["input_ids"][0].tolist() == [2, 5, 6, 3] + [0] * 16
    assert official["attention_mask"][0].tolist() == [1] * 4 + [0] * 16
    assert official["input_ids"][1].tolist() == [2] + [5, 6, 7] * 6 + [5]  # no [SEP]
    assert official["attention_mask"][1].tolist() == [1] * 20
    kept = WordPieceTokenizer(_vocab(tmp_path), max_length=20, keep_sep=True)(["red circle", long_text])
    assert kept["input_ids"][0].tolist() == official["input_ids"][0].tolist()
    assert kept["input_ids"][1].tolist() == [2] + [5, 6, 7] * 6 + [3]


def test_lavt_presets_cut_like_the_official_code_by_default():
    from ris_models.registry import MODEL_REGISTRY, build_model

    for name in ("lavt_swin_b", "lavt_tiny"):
        assert MODEL_REGISTRY[name]["keep_sep"] is False and MODEL_REGISTRY[name]["bert_dropout"] is False

    model = build_model("lavt_tiny")
    ids = model.tokenize([" ".join(["red"] * 30)])["input_ids"][0]
    assert ids[-1].item() == ids[1].item()  # "red" to the end: [SEP] was cut
    assert build_model("lavt_tiny", keep_sep=True).tokenize([" ".join(["red"] * 30)])["input_ids"][0, -1] == 3


def test_bert_stays_in_eval_mode_during_training_unless_asked():
    from ris_models.registry import build_model

    torch.manual_seed(0)
    model = build_model("lavt_tiny").train()
    assert model.training and model.encoder.training and not model.text_encoder.training
    assert not any(m.training for m in model.text_encoder.modules())
    tokens = model.tokenize(["red circle on the left"])
    a = model.text_encoder(**tokens).last_hidden_state
    b = model.text_encoder(**tokens).last_hidden_state
    assert torch.equal(a, b)  # no dropout
    noisy = build_model("lavt_tiny", bert_dropout=True).train()
    assert noisy.text_encoder.training
    a, b = (noisy.text_encoder(**tokens).last_hidden_state for _ in range(2))
    assert not torch.equal(a, b)
    assert not build_model("lavt_tiny").eval().text_encoder.training


def test_language_gates_start_like_the_official_initialisation():
    """Both gate layers truncated normal with std 0.02 (LAVT's Swin init), not zero: the gate can learn."""
    torch.manual_seed(0)
    gate = LanguageGate(256)
    for layer in (gate.fc1, gate.fc2):
        assert 0.018 < layer.weight.std().item() < 0.022 and layer.weight.abs().max().item() < 0.1
    assert gate(torch.ones(1, 256)).abs().sum() > 0


def test_checkpoints_from_before_parity_keep_their_tokenisation(tmp_path):
    """A saved LAVT config without the newer options reloads with the behaviour it was trained with."""
    from ris_models.lit_module import CheckpointError, RISLitModule, check_compatible, load_checkpoint
    from ris_models.registry import build_model

    lit = RISLitModule(build_model("lavt_tiny", input_size=32))
    ckpt = {"state_dict": lit.state_dict(), "hyper_parameters": dict(lit.hparams)}
    lit.on_save_checkpoint(ckpt)
    for key in ("keep_sep", "bert_dropout"):
        del ckpt["ris_model"]["config"][key]
    torch.save(ckpt, tmp_path / "old.ckpt")
    old = load_checkpoint(tmp_path / "old.ckpt").model
    assert old.tokenizer.keep_sep and old.bert_dropout
    with pytest.raises(CheckpointError, match=r"\['bert_dropout', 'keep_sep'\]"):
        check_compatible(ckpt, build_model("lavt_tiny", input_size=32))
    check_compatible(ckpt, build_model("lavt_tiny", input_size=32, keep_sep=True, bert_dropout=True))
