"""Referring-segmentation metrics: mIoU, oIoU and Prec@X, as a DDP-exact ``torchmetrics.Metric``.

Definitions (DESIGN 1.6, the standard ones used by LAVT/CRIS):

* per-sample IoU = |pred & target| / |pred | target|;
* ``mIoU`` = mean of the per-sample IoUs;
* ``oIoU`` = (sum of intersections) / (sum of unions) over the whole split ("overall IoU");
* ``P@X`` = share of samples whose IoU is **strictly greater** than X, X in {0.5, ..., 0.9}, as CRIS computes it
  (LAVT uses ``>=``; pass ``inclusive=True`` for that). The difference matters only for IoUs exactly equal to X.

Empty masks: an empty prediction against an empty target is a perfect answer, so its IoU is **1** (union 0). It adds
0 to both oIoU sums, so oIoU is unaffected. If every sample of a split has an empty union, oIoU is defined as 1 too.

Every state is a sum (``dist_reduce_fx="sum"``): intersections/unions/counts/hit counts are integers (int64) and the
IoU sum is float64, so syncing across DDP ranks gives the same numbers as one process seeing all samples.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_KEYS: tuple[str, ...] = ("mIoU", "oIoU") + tuple(f"P@{t}" for t in DEFAULT_THRESHOLDS)


def per_sample_iou(preds: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intersection, union (int64 ``[B]``) and IoU (float64 ``[B]``, 1 where the union is empty)."""
    if preds.shape != targets.shape:
        raise ValueError(f"preds and targets must have the same shape, got {tuple(preds.shape)} and "
                         f"{tuple(targets.shape)}")
    if preds.dim() == 2:
        preds, targets = preds.unsqueeze(0), targets.unsqueeze(0)
    if preds.dim() != 3:
        raise ValueError(f"expected boolean masks [B, H, W], got shape {tuple(preds.shape)}")
    preds = preds.bool().flatten(1)
    targets = targets.bool().flatten(1)
    inter = (preds & targets).sum(1, dtype=torch.int64)
    union = (preds | targets).sum(1, dtype=torch.int64)
    iou = torch.where(union > 0, inter.double() / union.clamp(min=1).double(),
                      torch.ones_like(union, dtype=torch.float64))
    return inter, union, iou


class RISMetrics(Metric):
    """Accumulates mIoU / oIoU / Prec@X over boolean masks; see the module docstring for exact definitions."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, inclusive: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.inclusive = bool(inclusive)
        self.add_state("intersection", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.zeros(len(self.thresholds), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:  # type: ignore[override]
        """``preds``/``targets``: boolean ``[B, H, W]`` (or one ``[H, W]`` mask)."""
        inter, union, iou = per_sample_iou(preds, targets)
        self.intersection += inter.sum().to(self.intersection.device)
        self.union += union.sum().to(self.union.device)
        self.iou_sum += iou.sum().to(self.iou_sum.device)
        self.count += torch.tensor(iou.numel(), dtype=torch.int64, device=self.count.device)
        thr = torch.tensor(self.thresholds, dtype=torch.float64, device=iou.device)
        passed = iou[:, None] >= thr[None] if self.inclusive else iou[:, None] > thr[None]
        self.hits += passed.sum(0).to(self.hits.device)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        count = self.count.double()
        if self.count.item() == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64)
            return {"mIoU": nan, "oIoU": nan, **{f"P@{t}": nan for t in self.thresholds}}
        out = {"mIoU": self.iou_sum / count,
               "oIoU": (self.intersection.double() / self.union.double()) if self.union.item() > 0
               else torch.tensor(1.0, dtype=torch.float64)}
        for t, h in zip(self.thresholds, self.hits):
            out[f"P@{t}"] = h.double() / count
        return out


def metrics_to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Turn ``RISMetrics.compute()`` output into plain floats (for JSON, tables and loggers)."""
    return {k: float(v) for k, v in values.items()}
