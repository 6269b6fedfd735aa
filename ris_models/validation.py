"""Checks of training / evaluation options before any data is built, labels generated or models constructed.

``check_train_config`` runs first in ``ris_models.training.train`` (hence in ``tools/train.py`` and the
reproduction), ``check_evaluate_config`` first in ``evaluate_checkpoint``. Each raises an `OptionError` (or a
`CheckpointError` for a checkpoint file) with a one-line message naming the option; the generic checks live in
``pseudo_ris.validation``.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Mapping

from pseudo_ris.data.plain import to_plain
from pseudo_ris.validation import (OptionError, check_choice, check_existing_dir, check_int, check_number,
                                   check_writable_dir)

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
#: environment variables through which a launcher (SLURM, torchrun, Lightning's own) tells a process its node
LAUNCHER_ENV = (("SLURM_NTASKS", "SLURM_PROCID"), ("WORLD_SIZE", "RANK"), ("NODE_RANK", "MASTER_ADDR"),
                ("LSB_JOBID",), ("OMPI_COMM_WORLD_SIZE",))


def precision_values() -> tuple[Any, ...]:
    """The ``precision`` values Lightning accepts (read from Lightning itself, so new ones are not refused)."""
    from lightning.fabric import connector

    values: tuple[Any, ...] = ()
    for name in ("_PRECISION_INPUT_STR", "_PRECISION_INPUT_STR_ALIAS", "_PRECISION_INPUT_INT"):
        values += typing.get_args(getattr(connector, name, typing.Literal[()]))
    return values


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _launched_by_a_launcher() -> bool:
    return any(all(key in os.environ for key in keys) for keys in LAUNCHER_ENV)


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """``trainer`` group: precision, accelerator (a GPU must exist), devices, nodes (a launcher must exist)."""
    trainer = dict(trainer or {})
    allowed = precision_values()
    precision = trainer.get("precision")
    if precision is not None and precision not in allowed and str(precision) not in map(str, allowed):
        raise OptionError(f"trainer.precision={precision!r} is not one of {', '.join(map(str, allowed))}")
    accelerator = str(trainer.get("accelerator") or "auto")
    check_choice(accelerator, "trainer.accelerator", ACCELERATORS)
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        wanted = len(devices)
    elif devices in ("auto", -1, "-1") or devices is None:
        wanted = 1
    else:
        wanted = check_int(int(devices) if str(devices).isdigit() else devices, "trainer.devices", minimum=1,
                           extra=("auto", -1))
    if accelerator in ("gpu", "cuda"):
        have = _cuda_count()
        if have == 0:
            raise OptionError(f"trainer.accelerator={accelerator} (e.g. trainer=gpu) needs a CUDA GPU, and torch sees "
                              "none on this machine; use trainer=cpu or trainer=default")
        if wanted > have:
            raise OptionError(f"trainer.devices={devices} but this machine has {have} CUDA device(s)")
    nodes = check_int(trainer.get("num_nodes", 1) or 1, "trainer.num_nodes", minimum=1)
    if nodes > 1 and not _launched_by_a_launcher():
        raise OptionError(
            f"trainer.num_nodes={nodes} needs a launcher: start the same command on every node under SLURM (srun) or "
            "torchrun, or set NODE_RANK, MASTER_ADDR and MASTER_PORT on each node; started alone it would wait "
            "for the other nodes forever")
    for key in ("accumulate_grad_batches", "check_val_every_n_epoch", "log_every_n_steps"):
        if trainer.get(key) is not None:
            check_int(trainer[key], f"trainer.{key}", minimum=1)
    if trainer.get("gradient_clip_val") is not None:
        check_number(trainer["gradient_clip_val"], "trainer.gradient_clip_val", minimum=0.0)


def check_checkpoint(path: Any, option: str, expect_model: str | None = None) -> dict[str, Any]:
    """``path`` is a readable checkpoint written by our trainer (read with ``weights_only=True``); returns it."""
    from ris_models.lit_module import CheckpointError, read_checkpoint

    try:
        checkpoint = read_checkpoint(Path(str(path)).expanduser())
    except CheckpointError as exc:
        raise CheckpointError(f"{option}: {exc}") from None
    name = (checkpoint.get("ris_model") or {}).get("name")
    if expect_model is not None and name != expect_model:
        raise CheckpointError(f"{option}={path} holds a {name!r} model but model={expect_model}; pick "
                              f"model={name} or another checkpoint")
    return checkpoint


def _check_common(cfg: Mapping[str, Any]) -> None:
    from ris_models.protocol import protocol_from_config

    check_int(cfg.get("num_workers", 0), "num_workers", minimum=0)
    check_int(cfg.get("limit_eval"), "limit_eval", minimum=1, allow_none=True)
    check_int(cfg.get("num_overlays", 0) or 0, "num_overlays", minimum=0)
    if cfg.get("eval") is not None:
        protocol_from_config(cfg["eval"])  # the evaluation protocol validates its own settings
    if cfg.get("data_root") is not None:
        check_existing_dir(cfg["data_root"], "data_root")
    check_trainer(cfg.get("trainer") or {})


def check_train_config(cfg: Mapping[str, Any]) -> None:
    """Every ``conf/train.yaml`` option that can be checked without data (see module docstring)."""
    from ris_models.datamodule import MODES, check_ratio, open_pseudo_dataset
    from ris_models.registry import list_models
    from ris_models.run_state import RESUME_MODES
    from ris_models.transforms import RESIZE_MODES

    cfg = to_plain(cfg)
    check_choice((cfg.get("data") or {}).get("mode", "human"), "data.mode", MODES)
    check_ratio(cfg.get("ratio", 1.0))
    check_int(cfg.get("epochs", 1), "epochs", minimum=1)
    check_int(cfg.get("max_steps", -1), "max_steps", minimum=1, extra=(-1, None))
    check_int(cfg.get("batch_size"), "batch_size", minimum=1)
    check_int(cfg.get("eval_batch_size"), "eval_batch_size", minimum=1, allow_none=True)
    check_number(cfg.get("lr"), "lr", minimum=0.0, exclusive_minimum=True)
    check_number(cfg.get("weight_decay", 0.0), "weight_decay", minimum=0.0)
    check_number(cfg.get("poly_power", 0.9), "poly_power", minimum=0.0)
    check_number(cfg.get("hflip_prob", 0.0), "hflip_prob", minimum=0.0, maximum=1.0)
    check_int(cfg.get("seed", 0), "seed")
    check_int(cfg.get("subset_seed"), "subset_seed", allow_none=True)
    check_int(cfg.get("checkpoint_every_n_steps"), "checkpoint_every_n_steps", minimum=1, allow_none=True)
    check_choice(cfg.get("resize_mode", "letterbox"), "resize_mode", RESIZE_MODES)
    check_choice(str(cfg.get("resume", "auto")), "resume", RESUME_MODES)
    model = (cfg.get("model") or {}).get("name")
    check_choice(model, "model", list_models())
    logger = (cfg.get("logger") or {}).get("type", "none")
    check_choice(logger, "logger", ("none", "csv", "wandb"))
    _check_common(cfg)
    mode = (cfg.get("data") or {}).get("mode", "human")
    if cfg.get("pseudo_root") is not None and mode in ("pseudo", "mixed"):
        open_pseudo_dataset(cfg["pseudo_root"], (cfg.get("data") or {}).get("pseudo_name", "pseudo"))
    check_writable_dir(cfg["output_dir"], "output_dir")
    for key in ("ckpt_path", "init_from"):
        if cfg.get(key):
            check_checkpoint(cfg[key], key, expect_model=model)


def check_evaluate_config(cfg: Mapping[str, Any]) -> None:
    """``conf/evaluate.yaml`` options; a checkpoint is read once here (without running code) to check it."""
    cfg = to_plain(cfg)
    check_int(cfg.get("batch_size", 32), "batch_size", minimum=1)
    _check_common(cfg)
    if cfg.get("ckpt") is not None:
        check_checkpoint(cfg["ckpt"], "ckpt")
        default_out, what = Path(str(cfg["ckpt"])).expanduser().parent, "next to the checkpoint"
    elif cfg.get("predictions") is not None:
        source = Path(str(cfg["predictions"])).expanduser()
        if not source.exists():
            raise OptionError(f"predictions={source}: no such file or folder")
        default_out, what = (source if source.is_dir() else source.parent), "next to the predictions"
    else:
        return  # the evaluation itself says that one of them is needed
    if cfg.get("out_dir"):
        check_writable_dir(cfg["out_dir"], "out_dir")
    else:
        check_writable_dir(default_out, f"out_dir ({what})")


REPRODUCE_TRAINERS = ("cpu", "gpu", "ddp", "default")


def check_reproduce_config(cfg: Mapping[str, Any]) -> None:
    """``conf/reproduce.yaml`` options, before SynthRef is built or any run starts (``results_md`` resolved)."""
    from pseudo_ris.validation import check_device
    from ris_models.reproduction.plan import DEFAULT_OUT_DIR, ReproduceConfigError, profile_options

    if cfg.get("profile") not in (cfg.get("profiles") or {}):
        raise ReproduceConfigError(f"profile={cfg.get('profile')!r} is not one of "
                                   f"{', '.join(sorted(cfg.get('profiles') or {}))}")
    profile_options(cfg)  # rows, datasets, step budgets
    trainer = check_choice(str(cfg.get("trainer") or "cpu"), "trainer", REPRODUCE_TRAINERS)
    if trainer == "gpu" and _cuda_count() == 0:
        raise OptionError("trainer=gpu needs a CUDA GPU, and torch sees none on this machine; use trainer=cpu")
    check_device(cfg.get("device") or "cpu")
    check_int(cfg.get("threads", 1), "threads", minimum=1)
    check_writable_dir(cfg.get("out_dir") or DEFAULT_OUT_DIR, "out_dir")
    check_writable_dir(Path(str(cfg["results_md"])).expanduser().parent, "results_md (its directory)")
    if cfg.get("data_root"):
        check_existing_dir(cfg["data_root"], "data_root")
