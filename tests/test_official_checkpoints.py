"""Official CRIS checkpoints: strict import (recorded official key names and shapes), the written checkpoint
evaluates and fine-tunes from step 0, and OpenAI CLIP TorchScript archives initialise the CRIS backbone."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from hydra import compose, initialize_config_dir

from ris_models.evaluation import evaluate_checkpoint
from ris_models.lit_module import load_checkpoint
from ris_models.official.common import (CheckpointImportError, check_state_dict, read_official_file,
                                        save_state_as_torchscript)
from ris_models.official.cris import CRIS_RENAMES, convert_cris_state
from ris_models.official.importer import import_official_checkpoint
from ris_models.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def _official_shapes(preset: str) -> dict[str, dict]:
    return json.loads((FIXTURES / f"official_{preset}_keys.json").read_text())["tensors"]


def _fake_official(preset: str, device: str = "meta") -> dict[str, torch.Tensor]:
    """A state dict with the official names, shapes and dtypes (as DistributedDataParallel saves it)."""
    out = {}
    for key, spec in _official_shapes(preset).items():
        dtype = getattr(torch, spec["dtype"])
        out[f"module.{key}"] = torch.empty(spec["shape"], dtype=dtype, device=device)
    return out


@pytest.fixture
def meta_build(monkeypatch):
    """Build full-size presets on the meta device: shapes only, in about a second."""
    import open_clip

    import ris_models.cris.encoders as encoders

    def meta_clip(arch, overrides):
        with torch.device("meta"):
            return open_clip.create_model(arch, pretrained=None, device="meta", **overrides)

    monkeypatch.setattr(encoders, "_random_clip", meta_clip)

    def build(name: str, **kw):
        with torch.device("meta"):
            return build_model(name, load_pretrained=False, **kw)

    return build


@pytest.mark.parametrize("preset", ["cris_r50", "cris_r101"])
def test_every_official_tensor_maps_strictly(preset, meta_build):
    official = _fake_official(preset)
    state, dropped = convert_cris_state({"epoch": 50, "best_iou": 0.7, "state_dict": official})
    assert dropped == ["backbone.logit_scale"]
    assert len(state) == len(official) - 1  # 661 of 662 (cris_r50), 967 of 968 (cris_r101)
    check_state_dict(state, meta_build(preset), "fake official")


def test_known_renames():
    """A few official names, read off CRIS.pytorch's modules, and where their tensors belong in ours."""
    official = {k: torch.zeros(1) for k in [
        "module.neck.txt_proj.0.weight", "module.neck.coordconv.0.conv1.1.running_var", "module.neck.coordconv.1.0.weight",
        "module.decoder.layers.2.multihead_attn.in_proj_weight", "module.decoder.layers.0.self_attn_norm.bias",
        "module.decoder.layers.1.self_attn.out_proj.weight", "module.proj.txt.bias", "module.proj.vis.4.weight",
        "module.backbone.visual.attnpool.connect.1.weight", "module.backbone.visual.attnpool.q_proj.weight",
        "module.backbone.visual.layer4.2.conv3.weight", "module.backbone.transformer.resblocks.11.mlp.c_fc.bias",
        "module.backbone.text_projection", "module.backbone.logit_scale"]}
    state, dropped = convert_cris_state(official)
    assert sorted(state) == sorted([
        "neck.sentence_proj.0.weight", "neck.coord.0.conv.1.running_var", "neck.coord.1.0.weight",
        "decoder.layers.2.cross_attn.in_proj_weight", "decoder.layers.0.self_out_norm.bias",
        "decoder.layers.1.self_attn.out_proj.weight", "projector.kernel.bias", "projector.vis.4.weight",
        "image_encoder.dense_pool.connect.1.weight", "image_encoder.dense_pool.pool.q_proj.weight",
        "image_encoder.visual.layer4.2.conv3.weight", "text_encoder.transformer.resblocks.11.mlp.c_fc.bias",
        "text_encoder.text_projection"])
    assert dropped == ["backbone.logit_scale"]


def test_unknown_key_and_shape_mismatch_name_the_tensor(meta_build):
    official = _fake_official("cris_r50")
    official["module.neck.extra_branch.weight"] = torch.empty(3, 4, device="meta")
    with pytest.raises(CheckpointImportError, match=r"neck\.extra_branch\.weight \[3, 4\]"):
        convert_cris_state(official)

    official = _fake_official("cris_r50")
    official["module.neck.f2_cat.0.weight"] = torch.empty(512, 1024, 1, 1, device="meta")  # official: 1536 in
    state, _ = convert_cris_state(official)
    with pytest.raises(CheckpointImportError,
                       match=r"neck\.merge4\.0\.weight: official \[512, 1024, 1, 1\] vs ours \[512, 1536, 1, 1\]"):
        check_state_dict(state, meta_build("cris_r50"), "fake official")

    official = _fake_official("cris_r50")
    del official["module.decoder.norm.weight"]
    state, _ = convert_cris_state(official)
    with pytest.raises(CheckpointImportError, match=r"not filled: decoder\.norm\.weight \[512\]"):
        check_state_dict(state, meta_build("cris_r50"), "fake official")

    with pytest.raises(CheckpointImportError, match="does not fit"):  # a RN101 checkpoint is not a cris_r50 one
        check_state_dict(convert_cris_state(_fake_official("cris_r101"))[0], meta_build("cris_r50"), "fake")


def test_reads_official_extras_without_running_code(tmp_path):
    """LAVT saves its argparse args, CRIS a MultiStepLR state (a Counter): readable with weights_only."""
    from collections import Counter

    path = tmp_path / "official.pth"
    torch.save({"state_dict": {"module.w": torch.ones(2)}, "args": argparse.Namespace(lr=5e-5, swin_type="base"),
                "scheduler": {"milestones": Counter([35]), "gamma": 0.1}, "epoch": 49}, path)
    obj = read_official_file(path)
    assert obj["args"].lr == 5e-5 and obj["scheduler"]["milestones"] == Counter([35])

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointImportError, match="cannot read official checkpoint"):
        read_official_file(tmp_path / "evil.pth")
    with pytest.raises(CheckpointImportError, match="not found"):
        read_official_file(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------- the whole path on cris_tiny
def _to_official_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our cris_tiny weights under official names (the inverse renaming), saved as the official trainer does."""
    inverse = {"self_out_norm": "self_attn_norm", "cross_out_norm": "cross_attn_norm", "cross_attn": "multihead_attn"}
    out = {"module.backbone.logit_scale": torch.tensor(4.6)}
    for key, tensor in state.items():
        for official, ours in CRIS_RENAMES:
            if key == ours or key.startswith(ours + "."):
                key = official + key[len(ours):]
                break
        parts = key.split(".")
        if parts[:2] == ["decoder", "layers"]:
            parts[3] = inverse.get(parts[3], parts[3])
        out["module." + ".".join(parts)] = tensor.clone()
    return out


@pytest.fixture
def official_tiny(tmp_path):
    torch.manual_seed(7)  # not the training seed (0): a run that ignored the imported weights would differ
    source = build_model("cris_tiny", load_pretrained=False).eval()
    path = tmp_path / "best_model.pth"
    torch.save({"epoch": 50, "cur_iou": 0.5, "best_iou": 0.5, "prec": {"Pr@50": 0.5},
                "state_dict": _to_official_names(source.state_dict()), "optimizer": {"state": {}, "param_groups": []}},
               path)
    return source, path


def test_imported_checkpoint_loads_and_computes_the_same(official_tiny, tmp_path):
    source, path = official_tiny
    torch.manual_seed(1)  # the model we import into starts from other weights
    report = import_official_checkpoint("cris", build_model("cris_tiny", load_pretrained=False), path,
                                        tmp_path / "out" / "imported.ckpt")
    assert report.dropped == ["backbone.logit_scale"] and report.mapped == len(source.state_dict())
    raw = torch.load(report.out, map_location="cpu", weights_only=True)  # plain data only
    assert raw["official_import"]["file"] == "best_model.pth" and "optimizer_states" not in raw
    lit = load_checkpoint(report.out, expect_model="cris_tiny")
    images = torch.randn(2, 3, 128, 128)
    tokens = source.tokenize(["the red ball on the left", "a dog"])
    with torch.no_grad():
        assert torch.equal(lit.model(images, **tokens), source(images, **tokens))


def _import_tool():
    spec = importlib.util.spec_from_file_location("import_checkpoint_tool", ROOT / "tools" / "import_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_tool(official_tiny, tmp_path):
    _, path = official_tiny
    tool = _import_tool()

    def cfg(*overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="import_checkpoint", overrides=list(overrides))

    with pytest.raises(CheckpointImportError, match="lavt preset"):
        tool.run(cfg("source=cris", "model=lavt_tiny", f"path={path}", f"out={tmp_path / 'x.ckpt'}"))
    with pytest.raises(CheckpointImportError, match="out=... is required"):
        tool.run(cfg("source=cris", "model=cris_tiny", f"path={path}"))
    import ris_models.training as training

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the input file was checked")

    real_build, training.build_ris_model = training.build_ris_model, no_build
    try:
        with pytest.raises(CheckpointImportError, match="missing.pth: no such file"):
            tool.run(cfg("source=cris", "model=cris_tiny", f"path={tmp_path / 'missing.pth'}",
                         f"out={tmp_path / 'x.ckpt'}"))
    finally:
        training.build_ris_model = real_build
    tool.run(cfg("source=cris", "model=cris_tiny", "dataset=refcocog", f"path={path}", f"out={tmp_path / 'x.ckpt'}"))
    lit = load_checkpoint(tmp_path / "x.ckpt")
    assert lit.data_info == {"dataset": "refcocog", "split_by": "umd"}
    assert lit.model.tokenizer.context_length == 17  # RefCOCOg asks 22; the tiny text tower holds 17 positions

    # from the shell: a file that does not fit is one line naming the tensor and both shapes, exit code 2
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["module.proj.txt.weight"] = torch.zeros(7, 128)  # ours: [289, 128]
    torch.save(obj, tmp_path / "bad.pth")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "import_checkpoint.py"), "source=cris",
                           "model=cris_tiny", f"path={tmp_path / 'bad.pth'}", f"out={tmp_path / 'y.ckpt'}"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "projector.kernel.weight: official [7, 128] vs ours [289, 128]" in proc.stderr
    assert not (tmp_path / "y.ckpt").exists()


def test_fine_tuning_from_an_imported_checkpoint_starts_at_step_zero(official_tiny, tiny_ris_data, tmp_path):
    from test_train import _train_cfg

    from ris_models.training import train

    source, path = official_tiny
    ckpt = import_official_checkpoint("cris", build_model("cris_tiny", load_pretrained=False), path,
                                      tmp_path / "imported.ckpt",
                                      data_info={"dataset": tiny_ris_data["dataset"], "split_by": "unc"}).out
    # evaluate.py scores it on the dataset recorded at import (data_root given: the official file has none)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        ev_cfg = compose(config_name="evaluate", overrides=[
            f"ckpt={ckpt}", f"data_root={tiny_ris_data['data_root']}", "split=val", "trainer=cpu",
            "trainer.enable_progress_bar=false", f"out_dir={tmp_path / 'eval'}", "num_overlays=0"])
    results = evaluate_checkpoint(ev_cfg)
    assert results["val"]["n"] == 8 and 0.0 <= results["val"]["mIoU"] <= 1.0
    expected = {k: v.clone() for k, v in source.state_dict().items()}

    class Check(L.Callback):
        seen = []

        def on_train_start(self, trainer, pl_module):
            state = pl_module.model.state_dict()
            self.seen.append((trainer.global_step, all(torch.equal(state[k], v) for k, v in expected.items())))

    for option in ("init_from", "ckpt_path"):
        Check.seen.clear()
        out = train(_train_cfg(tiny_ris_data, tmp_path / option, f"{option}={ckpt}",
                               "max_steps=2", "evaluate_after=false"), extra_callbacks=[Check()])
        assert Check.seen == [(0, True)] and out["global_step"] == 2


def test_openai_clip_torchscript_archive_initialises_the_backbone(tmp_path):
    """OpenAI's RN50.pt is a TorchScript archive; ours is made from a random CLIP of the tiny preset's shape."""
    import open_clip

    from ris_models.registry import MODEL_REGISTRY

    torch.manual_seed(3)
    clip = open_clip.create_model("RN50", pretrained=None, **MODEL_REGISTRY["cris_tiny"]["clip_overrides"])
    state = {k: v for k, v in clip.state_dict().items()}
    state.update(input_resolution=torch.tensor(128), context_length=torch.tensor(17), vocab_size=torch.tensor(49408))
    archive = save_state_as_torchscript(state, tmp_path / "RN50.pt")
    model = build_model("cris_tiny", pretrained=str(archive))
    ours = model.state_dict()
    assert torch.equal(ours["image_encoder.visual.layer1.0.conv1.weight"], state["visual.layer1.0.conv1.weight"])
    assert torch.equal(ours["image_encoder.dense_pool.pool.c_proj.weight"], state["visual.attnpool.c_proj.weight"])
    assert torch.equal(ours["text_encoder.token_embedding.weight"], state["token_embedding.weight"])
    assert torch.equal(ours["text_encoder.text_projection"], state["text_projection"])


@pytest.mark.parametrize("dataset,extra,expected", [("refcoco", [], 17), ("refcoco+", [], 17), ("refcocog", [], 22),
                                                    ("refcocog_google", [], 22), ("refcocog", ["+model.word_len=20"], 20)])
def test_cris_text_length_follows_the_dataset(dataset, extra, expected, meta_build):
    """CRIS.pytorch's configs: word_len 17 on RefCOCO/RefCOCO+, 22 on RefCOCOg (both partitions)."""
    from ris_models.training import build_ris_model

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=cris_r50", f"dataset={dataset}", *extra])
    with torch.device("meta"):
        model = build_ris_model(cfg.model, cfg.dataset, load_pretrained=False)
    assert model.tokenizer.context_length == expected == model.config["word_len"]
