"""Optimiser and learning-rate schedule of a training run, as a recipe (``conf/recipe/``) describes them.

The network decides its parameter groups (``RISModel.param_groups``: what the official code groups, e.g. CRIS's
CLIP backbone at ``lr x backbone_lr_mult``, LAVT's Swin norms without weight decay); the recipe decides the
optimiser (Adam / AdamW), the rates, and the schedule:

* ``poly``: ``lr_t = lr * (1 - t / T) ** power`` stepped every optimiser step (LAVT's train.py);
* ``multistep``: ``lr * gamma ** (number of milestones passed)``, stepped once per epoch (CRIS's MultiStepLR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from pseudo_ris.data.errors import PseudoRISError

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("poly", "multistep")


class OptimConfigError(PseudoRISError, ValueError):
    """An unknown optimiser or schedule, or inconsistent batch-size options."""


def poly_lambda(total_steps: int, power: float = 0.9):
    """LR multiplier of the poly schedule: ``(1 - step / total) ** power`` (never negative)."""
    total = max(1, int(total_steps))

    def fn(step: int) -> float:
        return max(0.0, 1.0 - min(step, total) / total) ** power

    return fn


@dataclass(frozen=True)
class OptimSpec:
    """The recipe's optimiser and schedule options (checked on construction)."""

    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    schedule: str = "poly"
    poly_power: float = 0.9
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise OptimConfigError(f"optimizer={self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise OptimConfigError(f"lr_schedule={self.schedule!r}; choose one of {SCHEDULES}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.weight_decay < 0:
            raise OptimConfigError(f"lr must be > 0 and weight_decay >= 0 (got lr={self.lr}, "
                                   f"weight_decay={self.weight_decay})")
        if list(self.milestones) != sorted(set(int(m) for m in self.milestones)):
            raise OptimConfigError(f"lr_milestones must be increasing epochs, got {list(self.milestones)}")


def build_optimizer(groups: list[dict[str, Any]], spec: OptimSpec) -> torch.optim.Optimizer:
    """Adam or AdamW over the model's named parameter groups (a group's own lr / weight_decay win)."""
    cls = torch.optim.AdamW if spec.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=spec.lr, weight_decay=spec.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: OptimSpec, total_steps: int) -> dict[str, Any]:
    """The Lightning ``lr_scheduler`` entry: poly per optimiser step, or multistep per epoch."""
    if spec.schedule == "poly":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(total_steps, spec.poly_power))
        return {"scheduler": scheduler, "interval": "step"}
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(spec.milestones), gamma=spec.gamma)
    return {"scheduler": scheduler, "interval": "epoch"}


def describe(optimizer: torch.optim.Optimizer, spec: OptimSpec, total_steps: int) -> str:
    """Lines printed at the start of a run: the optimiser, each parameter group, the schedule."""
    lines = [f"optimizer: {type(optimizer).__name__}"]
    for i, group in enumerate(optimizer.param_groups):
        n = sum(p.numel() for p in group["params"])
        lines.append(f"  group {group.get('name', i)}: {len(group['params'])} tensors, {n:,} parameters, "
                     f"lr {group['lr']:.3g}, weight_decay {group['weight_decay']:.3g}")
    if spec.schedule == "poly":
        lines.append(f"schedule: poly, lr x (1 - step / {int(total_steps)}) ** {spec.poly_power}, per optimiser step")
    else:
        lines.append(f"schedule: multistep, lr x {spec.gamma} after epochs {list(spec.milestones)}, per epoch")
    return "\n".join(lines)


def accumulation(batch_size: int, world_size: int, total_batch_size: int | None, accumulate: int = 1) -> int:
    """Gradient-accumulation steps so that ``batch_size x world_size x accumulation == total_batch_size``.

    ``total_batch_size`` None keeps ``accumulate`` (the trainer's own setting). A total that is not a whole
    multiple of ``batch_size x world_size`` is an error naming the numbers.
    """
    if total_batch_size is None:
        return int(accumulate)
    per_step = int(batch_size) * int(world_size)
    if int(total_batch_size) <= 0 or int(total_batch_size) % per_step:
        raise OptimConfigError(f"total_batch_size={total_batch_size} is not a multiple of batch_size "
                               f"{batch_size} x {world_size} device(s); change batch_size or the devices")
    return int(total_batch_size) // per_step


def spec_from(values: dict[str, Any]) -> OptimSpec:
    """An ``OptimSpec`` from ``RISLitModule`` hyper-parameters / recipe keys (missing keys: the defaults)."""
    milestones: Sequence[int] = values.get("lr_milestones") or ()
    return OptimSpec(optimizer=str(values.get("optimizer", "adamw")), lr=float(values.get("lr", 1e-4)),
                     weight_decay=float(values.get("weight_decay", 0.01)),
                     schedule=str(values.get("lr_schedule", "poly")),
                     poly_power=float(values.get("poly_power", 0.9)),
                     milestones=tuple(int(m) for m in milestones), gamma=float(values.get("lr_gamma", 0.1)))
