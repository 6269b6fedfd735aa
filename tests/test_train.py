"""End-to-end: Hydra configs -> train (few steps, tiny images) -> evaluate; resume; checkpoint and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import main_job_generate_overrides
from ris_models.datamodule import DataConfigError
from ris_models.evaluation import evaluate_checkpoint
from ris_models.lit_module import CheckpointError, load_checkpoint, poly_lambda
from ris_models.training import build_logger, train

CONF = Path(__file__).resolve().parents[1] / "conf"


def _cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _train_cfg(data: dict, out: Path, *extra: str):
    return _cfg("train", [
        "dataset=synthref", f"dataset.name={data['dataset']}", f"data_root={data['data_root']}",
        f"pseudo_root={data['pseudo_root']}", f"data.pseudo_name={data['pseudo_name']}",
        "model=cris_tiny", "model.input_size=32", "trainer=cpu", "trainer.enable_progress_bar=false",
        "logger=csv", "batch_size=4", "eval_batch_size=8", "epochs=2", f"output_dir={out}", "num_overlays=2",
        *extra])


class _StopAt(L.Callback):
    """Simulates a crash (kill) in the middle of the second epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_train_then_evaluate_end_to_end(tiny_ris_data, tmp_path, capsys):
    out = train(_train_cfg(tiny_ris_data, tmp_path / "run", "data=mixed", "ratio=0.5"))
    n_refs = 2 * 5 + 20  # half of the 10 human train images (2 refs each) + 20 pseudo refs
    assert out["global_step"] == 2 * -(-n_refs // 4)  # 2 epochs of ceil(30 / 4) batches
    best = Path(out["best_ckpt"])
    assert best.name == "best.ckpt" and best.is_file() and (best.parent / "last.ckpt").is_file()
    results = out["results"]
    assert list(results) == ["val", "testA"]
    for values in results.values():
        assert values["n"] == 8 and 0.0 <= values["mIoU"] <= 1.0 and 0.0 <= values["oIoU"] <= 1.0
    written = json.loads((best.parent / "metrics_tinyref.json").read_text())
    assert written["splits"]["val"]["oIoU"] == pytest.approx(results["val"]["oIoU"])
    assert (best.parent / "metrics_tinyref.md").read_text().count("| val |") == 1
    assert len(list((best.parent / "overlays_tinyref" / "testA").glob("*.png"))) == 2
    assert "val/oIoU" in (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]

    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["ris_model"]["name"] == "cris_tiny" and ckpt["ris_model"]["config"]["input_size"] == 32

    # evaluate.py's library path: the model is rebuilt from the checkpoint alone and scores the same numbers
    ev_dir = tmp_path / "eval"
    ev = evaluate_checkpoint(_cfg("evaluate", [f"ckpt={best}", "split=val", "trainer=cpu", f"out_dir={ev_dir}",
                                               "trainer.enable_progress_bar=false"]))
    assert list(ev) == ["val"]
    for key in ("mIoU", "oIoU", "P@0.5", "n"):
        assert ev["val"][key] == pytest.approx(results["val"][key])
    assert (ev_dir / "metrics_tinyref.json").is_file() and len(list((ev_dir / "overlays_tinyref" / "val").glob("*.png")))
    assert json.loads((ev_dir / "metrics_tinyref.json").read_text())["protocol"]["name"] == "project"

    # another protocol: printed above the table, recorded in its own files, only its metrics reported
    capsys.readouterr()
    cris = evaluate_checkpoint(_cfg("evaluate", [f"ckpt={best}", "split=val", "trainer=cpu", f"out_dir={ev_dir}",
                                                 "trainer.enable_progress_bar=false", "eval=cris"]))
    printed = capsys.readouterr().out
    assert printed.index("protocol cris: input letterbox by affine warp") < printed.index("| split |")
    assert "oIoU" not in cris["val"] and set(cris["val"]) == {"mIoU", "n", *(f"P@{t}" for t in (.5, .6, .7, .8, .9))}
    record = json.loads((ev_dir / "metrics_tinyref_cris.json").read_text())
    assert record["protocol"]["threshold"] == 0.35 and record["protocol"]["iou"] == "eps"
    assert record["protocol"]["resize_mode"] == "letterbox_affine" and record["splits"]["val"] == cris["val"]
    assert "protocol cris" in (ev_dir / "metrics_tinyref_cris.md").read_text()

    # the same checkpoint cannot be resumed as / loaded as another model type
    with pytest.raises(CheckpointError, match="cris_tiny"):
        train(_train_cfg(tiny_ris_data, tmp_path / "wrong", "model=lavt_tiny", "model.input_size=32",
                         f"ckpt_path={best}"))
    with pytest.raises(CheckpointError, match="not 'lavt_tiny'"):
        load_checkpoint(best, expect_model="lavt_tiny")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated or not a torch file"):
        load_checkpoint(bad)


def test_resume_after_interruption_gives_same_step_count(tiny_ris_data, tmp_path):
    # 10 human train images x 2 refs = 20 refs -> 5 batches per epoch, 3 epochs -> 15 steps
    args = ("epochs=3", "limit_eval=4", "evaluate_after=false")
    full = train(_train_cfg(tiny_ris_data, tmp_path / "full", *args))
    assert full["global_step"] == 15
    run = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_train_cfg(tiny_ris_data, run, *args), extra_callbacks=[_StopAt(7)])  # dies in epoch 2
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 5  # end of epoch 1
    resumed = train(_train_cfg(tiny_ris_data, run, *args, f"ckpt_path={last}"))
    assert resumed["global_step"] == full["global_step"]
    final = torch.load(last, map_location="cpu", weights_only=True)
    reference = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == reference["global_step"] == 15 and final["epoch"] == reference["epoch"]
    # the LR schedule continued instead of restarting: the last LR is the poly value at step 15 of 15
    sched = final["lr_schedulers"][0]
    assert sched["last_epoch"] == 15 and max(sched["_last_lr"]) == pytest.approx(0.0, abs=1e-12)


def test_rerunning_the_same_command_resumes_and_reevaluates(tiny_ris_data, tmp_path):
    from ris_models.run_state import RunConfigMismatch

    args = ("epochs=2", "limit_eval=4", "num_overlays=0")
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_train_cfg(tiny_ris_data, run, *args), extra_callbacks=[_StopAt(7)])  # killed in epoch 2
    resumed = train(_train_cfg(tiny_ris_data, run, *args))  # same command, no ckpt_path: continues
    assert resumed["global_step"] == 10 and resumed["results"]
    again = train(_train_cfg(tiny_ris_data, run, *args))  # finished: nothing trained, same numbers
    assert again["global_step"] == 10
    assert again["results"]["val"]["oIoU"] == pytest.approx(resumed["results"]["val"]["oIoU"])
    with pytest.raises(RunConfigMismatch, match=r"epochs: 2 -> 3.*resume=extend"):
        train(_train_cfg(tiny_ris_data, run, "epochs=3", "limit_eval=4", "num_overlays=0"))
    longer = train(_train_cfg(tiny_ris_data, run, "epochs=3", "limit_eval=4", "num_overlays=0", "resume=extend"))
    assert longer["global_step"] == 15  # resume=extend: more epochs continue the same experiment
    with pytest.raises(RunConfigMismatch, match=r"trainer.precision: '32-true' -> 'bf16-true'"):
        train(_train_cfg(tiny_ris_data, run, "epochs=3", "limit_eval=4", "trainer.precision=bf16-true"))
    with pytest.raises(RunConfigMismatch, match=r"lr: 0.0005 -> 0.001"):
        train(_train_cfg(tiny_ris_data, run, *args, "lr=1e-3"))  # another experiment in the same directory
    fresh = train(_train_cfg(tiny_ris_data, run, *args, "lr=1e-3", "resume=never"))
    assert fresh["global_step"] == 10
    assert json.loads((run / "run_config.json").read_text())["lr"] == pytest.approx(1e-3)


def test_configs_compose_and_reject_unknown_keys(tiny_ris_data, tmp_path):
    for group, options in {"model": ["cris_tiny", "lavt_tiny", "cris_r50", "cris_r101", "lavt_swin_b"],
                           "dataset": ["synthref", "synthref+", "synthrefg", "refcoco", "refcoco+", "refcocog",
                                       "refcocog_google"],
                           "trainer": ["default", "cpu", "gpu", "ddp"], "logger": ["none", "csv", "wandb"],
                           "data": ["human", "pseudo", "mixed"]}.items():
        for option in options:
            cfg = _cfg("train", [f"{group}={option}"])
            assert cfg[group] is not None
    cfg = _cfg("train", [])
    assert (cfg.data.mode, cfg.model.name, cfg.dataset.name, cfg.logger.type) == ("human", "lavt_tiny", "synthref", "csv")
    assert _cfg("train", ["dataset=refcocog_google"]).dataset.split_by == "google"
    assert _cfg("train", ["trainer=gpu"]).trainer.precision == "16-mixed"
    assert _cfg("train", ["trainer=ddp"]).trainer.strategy == "ddp"
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        _cfg("train", ["no_such_key=1"])
    with pytest.raises(ConfigCompositionException):
        _cfg("train", ["trainer.no_such_option=1"])
    with pytest.raises(ConfigCompositionException):
        _cfg("evaluate", ["ckpt=x", "no_such_key=1"])
    with pytest.raises(DataConfigError, match=r"ratio must be in \[0, 1\]"):
        train(_train_cfg(tiny_ris_data, tmp_path / "r", "data=mixed", "ratio=1.5"))
    with pytest.raises(DataConfigError, match="tools/generate.py"):
        train(_train_cfg(tiny_ris_data, tmp_path / "p", "data=pseudo", f"pseudo_root={tmp_path / 'missing'}"))


def test_wandb_logger_is_offline_by_default(tmp_path):
    logger = build_logger(OmegaConf.create({"type": "wandb", "online": False, "project": "p"}), tmp_path, "run")
    assert logger._offline is True
    online = build_logger(OmegaConf.create({"type": "wandb", "online": True, "project": "p"}), tmp_path, "run")
    assert online._offline is False
    assert build_logger(OmegaConf.create({"type": "none"}), tmp_path, "run") is False


def test_poly_schedule():
    fn = poly_lambda(100, 0.9)
    assert fn(0) == 1.0
    assert fn(50) == pytest.approx(0.5 ** 0.9)
    assert fn(100) == 0.0 and fn(150) == 0.0


def test_resolve_data(tiny_ris_data, tmp_path):
    from ris_models.prepare import DataRootError, resolve_data

    cfg = {"dataset": {"name": "refcoco"}, "data_root": str(tiny_ris_data["data_root"]), "pseudo_root": None}
    assert resolve_data(cfg).data_root == tiny_ris_data["data_root"] and resolve_data(cfg).pseudo_root is None
    with pytest.raises(DataRootError, match="needs data_root"):
        resolve_data({"dataset": {"name": "refcoco"}, "data_root": None})
    with pytest.raises(DataRootError, match="does not exist"):
        resolve_data({"dataset": {"name": "synthref"}, "data_root": str(tmp_path / "nope")})


def test_score_at_original_or_input(tiny_ris_data):
    from ris_models.datamodule import RISDataModule
    from ris_models.lit_module import RISLitModule
    from ris_models.registry import build_model

    model = build_model("cris_tiny", input_size=32)
    dm = RISDataModule(tiny_ris_data["data_root"], tiny_ris_data["dataset"], input_size=32,
                       image_mean=model.image_mean, image_std=model.image_std, batch_size=2)
    batch = next(iter(dm.val_dataloader()[0]))
    preds, targets = RISLitModule(model).predict_masks(batch)  # default: warped back to the 24x32 originals
    assert [tuple(p.shape) for p in preds] == [(24, 32)] * 2 and [tuple(t.shape) for t in targets] == [(24, 32)] * 2
    preds, targets = RISLitModule(model, eval_protocol={"score_at": "input", "threshold": 0.0}).predict_masks(batch)
    assert [tuple(p.shape) for p in preds] == [(32, 32)] * 2 and all(p.all() for p in preds)  # prob > 0 everywhere
    assert torch.equal(targets[0], batch["mask"][0])
    with pytest.raises(ValueError, match="score_at"):
        RISLitModule(model, eval_protocol={"score_at": "480"})


def test_checkpoint_keeps_its_vocabulary(tmp_path):
    """A LAVT checkpoint stays loadable after its WordPiece vocabulary file changes (the text is saved inside)."""
    from ris_models.lit_module import RISLitModule, check_compatible
    from ris_models.registry import build_model
    from ris_models.text import resolve_asset

    vocab = tmp_path / "vocab.txt"
    vocab.write_text(resolve_asset("synthref_wordpiece.txt").read_text())
    lit = RISLitModule(build_model("lavt_tiny", vocab_file=str(vocab), input_size=32))
    ckpt = {"state_dict": lit.state_dict(), "hyper_parameters": dict(lit.hparams)}
    lit.on_save_checkpoint(ckpt)
    path = tmp_path / "lavt.ckpt"
    torch.save(ckpt, path)
    size = lit.model.tokenizer.vocab_size
    vocab.write_text(vocab.read_text() + "zebra\n")  # the asset changes after training
    with pytest.raises(CheckpointError, match="another version of the vocabulary"):
        check_compatible(ckpt, build_model("lavt_tiny", vocab_file=str(vocab), input_size=32))
    loaded = load_checkpoint(path)
    assert loaded.model.tokenizer.vocab_size == size
    ids = loaded.model.tokenize(["the red circle"])["input_ids"]
    assert torch.equal(ids, lit.model.tokenize(["the red circle"])["input_ids"])


def test_lavt_tiny_trains_and_evaluates(tiny_ris_data, tmp_path):
    out = train(_train_cfg(tiny_ris_data, tmp_path / "lavt", "model=lavt_tiny", "model.input_size=64", "max_steps=3",
                           "epochs=1", "limit_eval=4", "logger=none", "num_overlays=0"))
    assert out["global_step"] == 3
    assert set(out["results"]) == {"val", "testA"} and out["results"]["val"]["n"] == 4
    # stopped before the first validation: best.ckpt is the final last.ckpt, so evaluating <run>/best.ckpt works
    assert Path(out["best_ckpt"]).read_bytes() == Path(out["last_ckpt"]).read_bytes()
    ckpt = torch.load(out["last_ckpt"], map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["ris_model"]["model_type"] == "lavt" and ckpt["ris_model"]["vocab_text"]


def test_the_main_jobs_clip_scorer_is_one_of_its_foundation_models(tmp_path, monkeypatch):
    """The main job scores DoC with the shipped CLIP stand-in: ``retrain_foundation`` must train it with SAM and CoCa,
    and the generation must use the weights it returns, while a CoCa-head scorer asks for no CLIP."""
    import pseudo_ris.foundation.registry as registry
    import ris_models.pseudo_labels as pl
    from ris_models.prepare import auto_pseudo_root
    from ris_models.reproduction.plan import compose

    asked, used = [], []
    monkeypatch.setattr(registry, "ensure_foundation_models", lambda cache, retrain=False, kinds=None: asked.append(
        (retrain, kinds)) or {k: tmp_path / f"{k}.pt" for k in kinds})
    monkeypatch.setattr(pl, "ensure_pseudo_labels", lambda gen, *, data_root, cache_dir, foundation: used.append(
        pl.resolve_generation_config(gen, data_root=data_root, foundation=foundation)) or tmp_path)
    main_job = main_job_generate_overrides()
    cfg = {"cache_dir": str(tmp_path), "pseudo_labels": {"retrain_foundation": True}}
    auto_pseudo_root(cfg, tmp_path, compose("generate", main_job))
    assert asked[-1] == (True, ("sam", "coca", "clip"))
    scorer = used[-1]["generator"]["scorer"]
    assert scorer["name"] == "clip_synthref" and scorer["pretrained"] == str(tmp_path / "clip.pt")
    assert used[-1]["generator"]["captioner"]["pretrained"] == str(tmp_path / "coca.pt")
    auto_pseudo_root(cfg, tmp_path, compose("generate", [o for o in main_job if not o.startswith("generator/scorer")]))
    assert asked[-1] == (True, ("sam", "coca")) and used[-1]["generator"]["scorer"]["kind"] == "captioner"
