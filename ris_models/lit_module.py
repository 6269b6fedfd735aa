"""LightningModule that trains and evaluates any ``RISModel`` (CRIS- or LAVT-style).

* Optimiser: Adam or AdamW over ``model.param_groups(lr)`` (the network's own groups: pretrained encoders at
  ``lr x backbone_lr_mult``, ...) with a poly schedule ``lr_t = lr * (1 - t / T) ** power`` stepped every optimiser
  step (LAVT's) or a multistep one stepped per epoch (CRIS's); the recipe (``conf/recipe/``) picks, see
  ``ris_models.optimization``. The groups and the schedule are printed when training starts.
* Validation: one ``RISMetrics`` per validation split, logged as ``<split>/mIoU``, ``<split>/oIoU`` (and P@X);
  ``val/oIoU`` selects checkpoints. Test: ``test/<split>/<metric>``, results kept in ``test_results``.
* Predictions and scoring follow the evaluation protocol (``eval_protocol``, the ``eval`` config group, see
  ``ris_models.protocol``): by default (``eval=project``) ``model.foreground_prob(...) > threshold`` (the model's
  default threshold, e.g. 0.35 for CRIS, unless set), warped back to the original image size; ``eval=lavt`` and
  ``eval=cris`` reproduce the official test pipelines.
* Checkpoints carry ``ris_model = {name, model_type, config}`` so ``load_checkpoint`` rebuilds the network without
  any Hydra config, and loading into a different architecture fails with a clear message instead of a wall of
  state-dict mismatches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import torch

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.safe_load import UnreadableFileError, UnsafeFileError, load_torch_file
from ris_models.eval_transforms import logits_to_masks
from ris_models.metrics import RISMetrics, metrics_to_floats
from ris_models.optimization import build_optimizer, build_scheduler, describe, spec_from
from ris_models.optimization import poly_lambda  # noqa: F401  (kept importable from here)
from ris_models.protocol import EvalProtocol, legacy_protocol, protocol_from_config
from ris_models.registry import RISModel, build_model, complete_saved_config

# Constructor arguments that only say where initial weights come from; they do not change the architecture.
_WEIGHT_SOURCE_KEYS = ("pretrained", "bert_standin", "bert_path", "swin_pretrained")


class CheckpointError(PseudoRISError):
    """A checkpoint that is not ours, is corrupt, or belongs to another model."""


class RISLitModule(L.LightningModule):
    """Train/validate/test wrapper; see the module docstring."""

    def __init__(self, model: RISModel, lr: float = 1e-4, weight_decay: float = 0.01, poly_power: float = 0.9,
                 eval_protocol: Mapping[str, Any] | EvalProtocol | None = None,
                 val_splits: Sequence[str] = ("val",), num_overlays: int = 0, data_info: dict | None = None,
                 optimizer: str = "adamw", lr_schedule: str = "poly", lr_milestones: Sequence[int] = (),
                 lr_gamma: float = 0.1) -> None:
        super().__init__()
        self.eval_protocol = protocol_from_config(eval_protocol)  # as configured (None settings: see .protocol)
        eval_protocol = self.eval_protocol.as_dict()  # hyper-parameters hold plain data only
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.lr, self.weight_decay, self.poly_power = float(lr), float(weight_decay), float(poly_power)
        self.optim_spec = spec_from({"optimizer": optimizer, "lr": lr, "weight_decay": weight_decay,
                                     "lr_schedule": lr_schedule, "poly_power": poly_power,
                                     "lr_milestones": list(lr_milestones), "lr_gamma": lr_gamma})
        self.val_splits = list(val_splits)
        self.val_metrics = torch.nn.ModuleList([self._new_metric() for _ in self.val_splits])
        self.num_overlays = int(num_overlays)
        self.data_info = dict(data_info or {})
        self.test_splits: list[str] = []
        self.test_metrics = torch.nn.ModuleList()
        self.test_results: dict[str, dict[str, float]] = {}
        self.overlays: dict[str, list[dict[str, Any]]] = {}

    # ----------------------------------------------------------------------------------------------- steps
    def forward(self, images: torch.Tensor, sentences: list[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self.model.tokenize(list(sentences)).items()}
        return self.model(images, **tokens)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"], batch["sentence"])
        loss = self.model.loss(logits, batch["mask"].float())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["sentence"]))
        return loss

    @property
    def protocol(self) -> EvalProtocol:
        """The evaluation protocol with every ``None`` filled (threshold, resize mode, input size)."""
        return self.eval_protocol.resolved(threshold=self.model.default_threshold,
                                           resize_mode=self.data_info.get("resize_mode", "letterbox"),
                                           input_size=self.model.input_size)

    def _new_metric(self) -> RISMetrics:
        return RISMetrics(self.eval_protocol.thresholds, rules=self.eval_protocol.rules)

    @torch.no_grad()
    def predict_masks(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Boolean predictions and targets at the protocol's scoring resolution (original size by default)."""
        logits = self(batch["image"], batch["sentence"])
        protocol = self.protocol
        preds = logits_to_masks(self.model, logits, batch["meta"], protocol, tuple(batch["image"].shape[-2:]))
        if protocol.score_at == "input":
            return preds, list(batch["mask"].to(self.device).bool())
        return preds, [m.to(self.device).bool() for m in batch["orig_mask"]]

    def _eval_step(self, batch: dict[str, Any], metric: RISMetrics, split: str | None) -> None:
        preds, targets = self.predict_masks(batch)
        for pred, target in zip(preds, targets):
            metric.update(pred, target)
        if split is not None and self.num_overlays > 0:
            kept = self.overlays.setdefault(split, [])
            for i in range(min(self.num_overlays - len(kept), len(preds))):
                kept.append({"image_id": int(batch["image_id"][i]), "sentence": batch["sentence"][i],
                             "pred": preds[i].cpu().numpy(), "target": targets[i].cpu().numpy()})

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.val_metrics[dataloader_idx], None)

    def on_validation_epoch_end(self) -> None:
        for split, metric in zip(self.val_splits, self.val_metrics):
            if int(metric.count) == 0 and not torch.distributed.is_initialized():
                continue
            values = metrics_to_floats(metric.compute())
            for key, value in values.items():
                # values are already synced over ranks (metric states are summed); sync_dist only silences the
                # distributed-logging warning (the mean of identical values is the value)
                self.log(f"{split}/{key}", value, prog_bar=key in ("mIoU", "oIoU") and split == self.val_splits[0],
                         sync_dist=True)
            metric.reset()

    def set_test_splits(self, splits: Sequence[str]) -> None:
        """Splits that ``trainer.test`` will see, in dataloader order (one metric each)."""
        self.test_splits = list(splits)
        self.test_metrics = torch.nn.ModuleList([self._new_metric() for _ in self.test_splits]).to(self.device)
        self.test_results, self.overlays = {}, {}

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.test_splits:
            raise RuntimeError("call set_test_splits(...) before trainer.test")
        split = self.test_splits[dataloader_idx]
        self._eval_step(batch, self.test_metrics[dataloader_idx], split)

    def on_test_epoch_end(self) -> None:
        for split, metric in zip(self.test_splits, self.test_metrics):
            values = metrics_to_floats(metric.compute())
            for key, value in values.items():
                self.log(f"test/{split}/{key}", value, sync_dist=True)
            values["n"] = int(self.all_gather(metric.count.clone()).sum())  # sentences scored, all ranks
            self.test_results[split] = values
            metric.reset()

    # ------------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        optimizer = build_optimizer(self.model.param_groups(self.lr), self.optim_spec)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        scheduler = build_scheduler(optimizer, self.optim_spec, total)
        if self._trainer is not None and self.trainer.is_global_zero:
            print(describe(optimizer, self.optim_spec, total))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # -------------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ris_model"] = {"name": self.model.config.get("name"), "model_type": self.model.model_type,
                                   "config": self.model.config}
        vocab = _vocab_file(self.model)
        if vocab is not None:  # the vocabulary file may change later; the weights only fit this exact one
            checkpoint["ris_model"]["vocab_text"] = vocab.read_text(encoding="utf-8")
        checkpoint["ris_data"] = self.data_info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_compatible(checkpoint, self.model, source="checkpoint")


def _vocab_file(model: RISModel) -> Path | None:
    """The local vocabulary file a model's tokenizer reads (WordPiece for LAVT), if any."""
    path = getattr(getattr(model, "tokenizer", None), "vocab_file", None)
    return Path(path) if path is not None and Path(path).is_file() else None


def _materialise_vocab(text: str) -> Path:
    """Write a checkpoint's saved vocabulary to a content-addressed temp file (atomic, reused)."""
    import hashlib
    import tempfile

    from pseudo_ris.data.io import atomic_write_text

    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "ris_models_vocab" / f"{digest}.txt"
    if not path.is_file():
        atomic_write_text(path, text)
    return path


def _arch(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _WEIGHT_SOURCE_KEYS}


def check_compatible(checkpoint: dict[str, Any], model: RISModel, source: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` if ``checkpoint`` was trained with another model type/preset/architecture."""
    info = checkpoint.get("ris_model")
    if info is None:
        raise CheckpointError(f"{source} has no 'ris_model' entry: it was not written by ris_models' trainer")
    mine = {"name": model.config.get("name"), "model_type": model.model_type}
    if info.get("model_type") != mine["model_type"] or info.get("name") != mine["name"]:
        raise CheckpointError(
            f"{source} holds a {info.get('model_type')!r} model (preset {info.get('name')!r}) but the configured "
            f"model is {mine['model_type']!r} (preset {mine['name']!r}); pick model={info.get('name')} or another "
            f"checkpoint")
    vocab = _vocab_file(model)
    if info.get("vocab_text") and vocab is not None and vocab.read_text(encoding="utf-8") != info["vocab_text"]:
        raise CheckpointError(f"{source} was trained with another version of the vocabulary {vocab.name}; "
                              "evaluate it with tools/evaluate.py (which uses the vocabulary saved in the "
                              "checkpoint) or restore that vocabulary file")
    theirs, ours = _arch(complete_saved_config(info.get("config", {}))), _arch(model.config)
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if diff:
        raise CheckpointError(f"{source} was trained with a different {mine['name']} architecture "
                              f"(options differ: {diff}); rebuild the model from the checkpoint instead")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, read without running code (``weights_only=True``); `CheckpointError` names the file."""
    path = Path(path).expanduser()
    try:
        checkpoint = load_torch_file(path, what="checkpoint")
    except (UnsafeFileError, UnreadableFileError) as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    if "ris_model" not in checkpoint:
        raise CheckpointError(f"{path} has no 'ris_model' entry: it was not written by ris_models' trainer")
    return checkpoint


def load_checkpoint(path: str | Path, expect_model: str | None = None, *, allow_download: bool = False,
                    **overrides: Any) -> RISLitModule:
    """Rebuild the network from the config saved in ``path`` and load its weights (on CPU, eval mode).

    ``expect_model``: a preset name the caller requires (``CheckpointError`` if the checkpoint holds another).
    ``overrides``: ``RISLitModule`` options to change for evaluation (``eval_protocol``, ``num_overlays``, ...).
    """
    checkpoint = read_checkpoint(path)
    info = checkpoint["ris_model"]
    if expect_model is not None and info.get("name") != expect_model:
        raise CheckpointError(f"checkpoint {path} holds model {info.get('name')!r} ({info.get('model_type')}), "
                              f"not {expect_model!r}")
    config = complete_saved_config(dict(info["config"]))
    if info.get("vocab_text") and config.get("vocab_file"):
        config["vocab_file"] = str(_materialise_vocab(info["vocab_text"]))
    # the weights come from the checkpoint: build the architecture (and tokenizer) without reading encoder weights
    model = build_model(**config, load_pretrained=False, allow_download=allow_download)
    model.config["vocab_file"] = info["config"].get("vocab_file", config.get("vocab_file"))
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    legacy = {k: hparams.pop(k) for k in ("threshold", "eval_resolution") if k in hparams}
    if legacy and "eval_protocol" not in hparams:  # written before evaluation protocols existed
        hparams["eval_protocol"] = legacy_protocol(**legacy).as_dict()
    hparams.update(overrides)
    lit = RISLitModule(model, **hparams)
    try:
        missing, unexpected = lit.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as exc:  # size mismatches, e.g. a vocabulary file that changed since training
        raise CheckpointError(f"checkpoint {path} does not fit the rebuilt {info.get('name')}: {exc}") from exc
    missing = [k for k in missing if not k.startswith(("val_metrics", "test_metrics"))]
    unexpected = [k for k in unexpected if not k.startswith(("val_metrics", "test_metrics"))]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the rebuilt {info.get('name')} "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    lit.data_info = dict(checkpoint.get("ris_data", {}))
    return lit.eval()
