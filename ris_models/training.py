"""Build the model, data, logger and Trainer from a ``conf/train.yaml`` config, then fit and evaluate.

``tools/train.py`` is a thin Hydra wrapper around ``train(cfg)``; tests call the same function with a composed
config. Layout of a run (``output_dir``)::

    checkpoints/best.ckpt, last.ckpt         best by <first val split>/oIoU (the final weights when no validation
                                             ran), and the latest (resume from it; last.prev.ckpt: the one before)
    checkpoints/metrics_<dataset>.json|.md   final evaluation of best.ckpt on every eval split
    run_config.json, finished.json           the run's identity; present once training ended normally
    .lock, checkpoints/.lock                 held while a process writes here (one writer per directory)
    checkpoints/overlays_<dataset>/<split>/  a few PNG overlays per split
    csv/version_<k>/ or wandb/              logs (a resumed run gets a new version)
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Mapping

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from pseudo_ris.data.locks import directory_lock, is_primary_process
from ris_models.checkpoint_io import AtomicCheckpointIO, atomic_copy
from ris_models.datamodule import MODES, DataConfigError, RISDataModule, check_ratio, open_pseudo_dataset
from ris_models.evaluation import dataset_label, evaluate_splits
from ris_models.finetune import load_initial_weights, read_init_checkpoint, split_resume_and_init
from ris_models.lit_module import RISLitModule
from ris_models.optimization import accumulation, spec_from
from ris_models.prepare import ResolvedData, resolve_data
from ris_models.protocol import protocol_from_config
from ris_models.registry import MODEL_REGISTRY, RISModel, build_model, check_weight_sources
from ris_models.resumable import DataPositionCallback, RNGStateCallback
from ris_models.run_state import mark_finished, plan_resume
from ris_models.validation import check_train_config

LOGGERS = ("none", "csv", "wandb")


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else default
    return default if value is None else value


def build_ris_model(model_cfg: Mapping[str, Any], dataset_cfg: Mapping[str, Any] | None = None,
                    load_pretrained: bool = True, allow_download: bool = False) -> RISModel:
    """``model`` config group -> network: ``name`` picks the registry preset; non-null keys override it.

    A CRIS model takes its text length from the dataset (``dataset.word_len``: 17 RefCOCO/+, 22 RefCOCOg, as the
    official configs) unless ``model.word_len`` is set; a preset whose text tower holds fewer positions (the tiny
    CRIS: 17) keeps its own length.
    """
    overrides = {k: v for k, v in dict(model_cfg).items() if k != "name" and v is not None}
    name = str(model_cfg["name"])
    word_len = (dataset_cfg or {}).get("word_len")
    preset = MODEL_REGISTRY.get(name, {})
    if word_len is not None and "word_len" in preset:
        context = ((preset.get("clip_overrides") or {}).get("text_cfg") or {}).get("context_length", 77)
        overrides.setdefault("word_len", min(int(word_len), int(context)))
    return build_model(name, load_pretrained=load_pretrained, allow_download=allow_download, **overrides)


def check_data_options(cfg: Mapping[str, Any], data: ResolvedData) -> None:
    """Validate the cheap data options early: ``ratio`` in [0, 1], mode known, pseudo labels present."""
    mode = cfg["data"]["mode"]
    if mode not in MODES:
        raise DataConfigError(f"unknown data mode {mode!r}; expected one of {MODES}")
    check_ratio(cfg.get("ratio", 1.0))
    if mode in ("pseudo", "mixed"):
        open_pseudo_dataset(data.pseudo_root, cfg["data"].get("pseudo_name", "pseudo"))


def check_recipe(cfg: Mapping[str, Any]) -> None:
    """The recipe's optimiser / schedule options, and its total batch size where the device count is known."""
    spec_from(dict(cfg))
    trainer = cfg.get("trainer") or {}
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    if cfg.get("total_batch_size") and isinstance(devices, int) and devices > 0:
        accumulation(cfg["batch_size"], devices * int(nodes), cfg["total_batch_size"])


def build_datamodule(cfg: Mapping[str, Any], model: RISModel, data: ResolvedData) -> RISDataModule:
    ds_cfg, data_cfg = cfg["dataset"], cfg["data"]
    protocol = protocol_from_config(cfg.get("eval"))
    return RISDataModule(
        data.data_root, ds_cfg["name"], split_by=ds_cfg.get("split_by"), mode=data_cfg["mode"],
        ratio=cfg.get("ratio", 1.0), pseudo_root=data.pseudo_root, pseudo_name=data_cfg.get("pseudo_name", "pseudo"),
        val_splits=ds_cfg.get("val_splits"), eval_splits=ds_cfg.get("eval_splits"),
        input_size=model.input_size, image_mean=model.image_mean, image_std=model.image_std,
        batch_size=cfg["batch_size"], eval_batch_size=cfg.get("eval_batch_size"),
        num_workers=cfg.get("num_workers", 0), resize_mode=cfg.get("resize_mode", "letterbox"),
        hflip_prob=cfg.get("hflip_prob", 0.0), subset_seed=_get(cfg, "subset_seed", cfg.get("seed", 0)),
        limit_eval=cfg.get("limit_eval"), eval_resize_mode=protocol.resize_mode, target_resize=protocol.target_resize,
        seed=int(cfg.get("seed", 0)))


def build_logger(logger_cfg: Mapping[str, Any], output_dir: Path, run_name: str):
    kind = logger_cfg.get("type", "none")
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(output_dir), name="csv")  # csv/version_<k>/: a resume never overwrites logs
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        # offline unless asked: no account or network needed; `wandb sync <dir>` uploads later
        return WandbLogger(project=logger_cfg.get("project", "pseudo-ris"), entity=logger_cfg.get("entity"),
                           name=logger_cfg.get("name") or run_name, save_dir=str(output_dir),
                           offline=not bool(logger_cfg.get("online", False)), log_model=False)
    raise ValueError(f"unknown logger type {kind!r}; expected one of {LOGGERS}")


class StepCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every N optimiser steps, except on an epoch's last batch (the epoch-end save follows it).

    A checkpoint taken after the last batch but before the epoch's validation would resume past that validation.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def build_trainer(cfg: Mapping[str, Any], output_dir: Path, logger: Any = False, monitor: str | None = None,
                  extra_callbacks: list | None = None) -> tuple[L.Trainer, ModelCheckpoint | None]:
    """Trainer from the ``trainer`` group plus top-level ``epochs``/``max_steps``; checkpoints if ``monitor``.

    Checkpoints are written atomically and loaded weights-only (`AtomicCheckpointIO`) and carry the data position
    and random states (``ris_models.resumable``). The training sampler splits DDP ranks itself, so Lightning is
    told not to replace it.
    """
    trainer_kwargs = {k: v for k, v in dict(cfg["trainer"]).items() if v is not None}
    refresh = int(trainer_kwargs.pop("progress_refresh_rate", 1))
    callbacks: list = [TQDMProgressBar(refresh_rate=refresh)] if trainer_kwargs.get("enable_progress_bar", True) else []
    checkpoint = None
    if monitor is not None:
        ckpt_dir = str(output_dir / "checkpoints")
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="max", save_top_k=1,
                                     auto_insert_metric_name=False, enable_version_counter=False)
        # Lightning >= 2.5 refreshes save_last only when the best changes: a separate latest-only checkpoint at
        # every epoch end, plus every N steps if asked (Lightning allows one trigger per callback)
        last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                               enable_version_counter=False)
        callbacks += [DataPositionCallback(), RNGStateCallback(), checkpoint, last]
        every = cfg.get("checkpoint_every_n_steps")
        if every:
            callbacks.append(StepCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                            every_n_train_steps=int(every), enable_version_counter=False))
        if logger:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += extra_callbacks or []
    trainer = L.Trainer(default_root_dir=str(output_dir), logger=logger, callbacks=callbacks,
                        max_epochs=int(cfg.get("epochs", 1)), max_steps=int(_get(cfg, "max_steps", -1)),
                        enable_checkpointing=checkpoint is not None, plugins=[AtomicCheckpointIO()],
                        use_distributed_sampler=False, **trainer_kwargs)
    if cfg.get("total_batch_size"):  # the recipe's total batch: per-device batch x devices x accumulation
        trainer.accumulate_grad_batches = accumulation(cfg["batch_size"], trainer.world_size,
                                                       cfg["total_batch_size"], trainer.accumulate_grad_batches)
    return trainer, checkpoint


def train(cfg: Mapping[str, Any], extra_callbacks: list | None = None,
          generate_cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fit on the configured data, then evaluate the best checkpoint on all eval splits (printed and written).

    ``generate_cfg`` (composed ``conf/generate.yaml``) lets ``data=pseudo|mixed`` on SynthRef make its own pseudo
    labels when ``pseudo_root`` is unset (the out-of-the-box main job). The output directory is locked for the
    whole call (a second process is refused, naming this one); a finished run is not trained again.

    Returns ``{"output_dir", "best_ckpt", "last_ckpt", "results", "global_step", "train_seconds"}``.
    """
    check_train_config(cfg)  # every option that needs no data, before anything is built, generated or written
    output_dir = Path(str(cfg["output_dir"])).expanduser()
    with contextlib.ExitStack() as stack:
        if is_primary_process():  # DDP ranks started by the primary share its directory
            stack.enter_context(directory_lock(output_dir, purpose="train into (output_dir=...)"))
            stack.enter_context(directory_lock(output_dir / "checkpoints", purpose="train into (output_dir=...)"))
        return _train_locked(cfg, output_dir, extra_callbacks, generate_cfg)


def _train_locked(cfg: Mapping[str, Any], output_dir: Path, extra_callbacks: list | None,
                  generate_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    protocol_from_config(cfg.get("eval"))  # a bad evaluation setting fails before any slow stage
    plan = plan_resume(cfg, output_dir)  # before any slow stage: a mismatched directory fails at once
    model_cfg = {k: v for k, v in dict(cfg["model"]).items() if k != "name"}
    check_weight_sources(str(cfg["model"]["name"]), bool(cfg.get("allow_download", False)), **model_cfg)
    # a weights-only checkpoint (e.g. an imported official one) starts a new run from its weights
    ckpt_path, init_from = split_resume_and_init(plan.ckpt, None if plan.ckpt else cfg.get("init_from"))
    init_ckpt = read_init_checkpoint(init_from, str(cfg["model"]["name"])) if init_from and not plan.finished \
        else None
    check_recipe(cfg)  # an unknown optimiser or an impossible total batch fails before any slow stage
    data = resolve_data(cfg, generate_cfg)
    # seed after data preparation: whether pseudo labels were generated now or reused from the cache must not
    # change the model's initialisation
    L.seed_everything(int(cfg["seed"]), workers=True)
    check_data_options(cfg, data)  # bad ratio / missing pseudo labels fail before any model is built
    model = build_ris_model(cfg["model"], cfg.get("dataset"),
                            allow_download=bool(cfg.get("allow_download", False)))
    dm = build_datamodule(cfg, model, data)
    lit = RISLitModule(model, lr=cfg["lr"], weight_decay=cfg["weight_decay"], poly_power=cfg.get("poly_power", 0.9),
                       eval_protocol=protocol_from_config(cfg.get("eval")).as_dict(),
                       optimizer=cfg.get("optimizer", "adamw"), lr_schedule=cfg.get("lr_schedule", "poly"),
                       lr_milestones=list(cfg.get("lr_milestones") or []), lr_gamma=cfg.get("lr_gamma", 0.1),
                       val_splits=dm.val_splits, num_overlays=cfg.get("num_overlays", 4),
                       data_info={"dataset": dm.dataset_name, "split_by": dm.human_dataset.split_by,
                                  "data_root": str(data.data_root), "mode": dm.mode, "ratio": dm.ratio,
                                  "resize_mode": dm.resize_mode})
    if init_ckpt is not None:
        load_initial_weights(lit, init_ckpt, str(init_from))
        del init_ckpt
    run_name = output_dir.name
    logger = build_logger(cfg["logger"], output_dir, run_name) if not plan.finished else False
    trainer, checkpoint = build_trainer(cfg, output_dir, logger, monitor=f"{dm.val_splits[0]}/oIoU",
                                        extra_callbacks=extra_callbacks)
    ckpt_dir = output_dir / "checkpoints"
    best, last = ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt"
    out = {"output_dir": output_dir, "global_step": 0, "train_seconds": 0.0, "best_ckpt": str(best),
           "last_ckpt": str(last), "results": {}}
    if plan.finished:
        from ris_models.checkpoint_io import load_checkpoint_file

        out["global_step"] = int(load_checkpoint_file(last).get("global_step", 0))
        if trainer.is_global_zero:
            print(f"{output_dir} holds a finished run ({out['global_step']} steps): evaluating only "
                  "(resume=extend with more epochs/max_steps trains on; resume=never starts afresh)")
    else:
        if trainer.is_global_zero:
            print(f"training data: {dm.describe()}; validation: {dm.val_splits}; output: {output_dir}")
            if plan.note:
                print(plan.note)
            if ckpt_path:
                print(f"resuming from {ckpt_path}")
            elif init_from:
                print(f"fine-tuning from the weights of {init_from} (new run: step 0, fresh optimizer and schedule)")
        start = time.perf_counter()
        trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        out["train_seconds"] = time.perf_counter() - start
        out["global_step"] = trainer.global_step
        if trainer.interrupted:
            return out
        _finish(trainer, checkpoint, output_dir)
    if not cfg.get("evaluate_after", True):
        return out
    if trainer.is_global_zero:
        print(f"trained {out['global_step']} steps in {out['train_seconds']:.0f} s; evaluating {best} on "
              f"{dm.eval_splits}")
    out["results"] = evaluate_splits(trainer, lit, dm, None, ckpt_dir, ckpt_path=str(best),
                                     dataset_label=dataset_label(dm.dataset_name, dm.human_dataset.split_by),
                                     checkpoint_label=str(best))
    return out


def _finish(trainer: L.Trainer, checkpoint: ModelCheckpoint | None, output_dir: Path) -> None:
    """After a normal end of training: final ``last.ckpt``, a ``best.ckpt`` in any case, then ``finished.json``.

    ``last.ckpt`` is rewritten with the final weights (the epoch-end or step checkpoint may predate the last step
    when ``max_steps`` stops mid-epoch). Without any validation there is no best: ``best.ckpt`` is then a copy of
    the final ``last.ckpt``, so ``tools/evaluate.py ckpt=<run>/checkpoints/best.ckpt`` always works.
    """
    ckpt_dir = output_dir / "checkpoints"
    trainer.save_checkpoint(ckpt_dir / "last.ckpt")
    if trainer.is_global_zero:
        if not (checkpoint and checkpoint.best_model_path and Path(checkpoint.best_model_path).is_file()):
            atomic_copy(ckpt_dir / "last.ckpt", ckpt_dir / "best.ckpt")
            print("no validation ran: best.ckpt is a copy of the final last.ckpt")
        mark_finished(output_dir, {"global_step": trainer.global_step, "epoch": trainer.current_epoch})
    trainer.strategy.barrier("finished")  # other ranks evaluate best.ckpt next: it must exist
