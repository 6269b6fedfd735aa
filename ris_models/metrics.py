"""Referring-segmentation metrics: mIoU, oIoU and Prec@X, as a DDP-exact ``torchmetrics.Metric``.

Definitions (the standard ones of LAVT and CRIS):

* per-sample IoU = |pred & target| / |pred | target|;
* ``mIoU`` = mean of the per-sample IoUs;
* ``oIoU`` = (sum of intersections) / (sum of unions) over the whole split ("overall IoU");
* ``P@X`` = share of samples whose IoU passes X, X in {0.5, ..., 0.9}.

The official codes differ in details that only matter at the edges; ``ScoringRules`` makes each one a setting
(the evaluation protocols in ``conf/eval/`` pick them, see docs/evaluation_protocols.md):

* ``iou``: ``exact`` = I / U; ``eps`` = I / (U + 1e-6) in float64 (CRIS), which is slightly below the exact value
  and 0 when both masks are empty;
* ``empty_iou``: the IoU of an empty prediction against an empty target with the exact formula: 1 here (a perfect
  answer), 0 in LAVT's ``test.py``. Such a pair adds 0 to both oIoU sums, so oIoU is unaffected. If every sample of
  a split has an empty union, oIoU is defined as 1;
* ``precision_rule``: ``>`` (CRIS) or ``>=`` (LAVT);
* ``threshold_dtype``: ``float32`` compares against the thresholds rounded to float32, as CRIS's
  ``torch.arange(0.5, 1.0, 0.1)`` does (0.7 becomes 0.699999988..., 0.6 becomes 0.600000024...); with ``eps`` an
  IoU of exactly 0.7 then passes ``>`` when the union exceeds 58 pixels.

Every state is a sum (``dist_reduce_fx="sum"``): intersections/unions/counts/hit counts are integers (int64) and the
IoU sum is float64, so syncing across DDP ranks gives the same numbers as one process seeing all samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torchmetrics import Metric

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_KEYS: tuple[str, ...] = ("mIoU", "oIoU") + tuple(f"P@{t}" for t in DEFAULT_THRESHOLDS)
IOU_FORMULAS = ("exact", "eps")
PRECISION_RULES = (">", ">=")
THRESHOLD_DTYPES = ("float64", "float32")
EPS = 1e-6  # CRIS: iou = I / (U + 1e-6)


@dataclass(frozen=True)
class ScoringRules:
    """How one (prediction, target) pair becomes an IoU and how P@X counts it; see the module docstring."""

    iou: str = "exact"
    empty_iou: float = 1.0
    precision_rule: str = ">"
    threshold_dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.iou not in IOU_FORMULAS:
            raise ValueError(f"iou must be one of {IOU_FORMULAS}, got {self.iou!r}")
        if self.precision_rule not in PRECISION_RULES:
            raise ValueError(f"precision_rule must be one of {PRECISION_RULES}, got {self.precision_rule!r}")
        if self.threshold_dtype not in THRESHOLD_DTYPES:
            raise ValueError(f"threshold_dtype must be one of {THRESHOLD_DTYPES}, got {self.threshold_dtype!r}")
        if float(self.empty_iou) not in (0.0, 1.0):
            raise ValueError(f"empty_iou must be 0 or 1, got {self.empty_iou!r}")
        if self.iou == "eps" and float(self.empty_iou) != 0.0:
            raise ValueError("iou=eps gives 0 for an empty prediction of an empty target; set empty_iou=0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_sample_iou(preds: torch.Tensor, targets: torch.Tensor, rules: ScoringRules = ScoringRules()
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intersection, union (int64 ``[B]``) and IoU (float64 ``[B]``) under ``rules``."""
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
    if rules.iou == "eps":
        iou = inter.double() / (union.double() + EPS)
    else:
        iou = torch.where(union > 0, inter.double() / union.clamp(min=1).double(),
                          torch.full_like(union, float(rules.empty_iou), dtype=torch.float64))
    return inter, union, iou


def passes(iou: torch.Tensor, thresholds: Sequence[float], rules: ScoringRules) -> torch.Tensor:
    """Boolean ``[B, T]``: which IoUs pass which thresholds (comparison done in float64)."""
    dtype = torch.float32 if rules.threshold_dtype == "float32" else torch.float64
    thr = torch.tensor(list(thresholds), dtype=dtype, device=iou.device).double()
    iou = iou.double()
    return iou[:, None] >= thr[None] if rules.precision_rule == ">=" else iou[:, None] > thr[None]


class RISMetrics(Metric):
    """Accumulates mIoU / oIoU / Prec@X over boolean masks; see the module docstring for exact definitions."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, rules: ScoringRules | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.rules = rules if rules is not None else ScoringRules()
        self.add_state("intersection", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.zeros(len(self.thresholds), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:  # type: ignore[override]
        """``preds``/``targets``: boolean ``[B, H, W]`` (or one ``[H, W]`` mask)."""
        inter, union, iou = per_sample_iou(preds, targets, self.rules)
        self.intersection += inter.sum().to(self.intersection.device)
        self.union += union.sum().to(self.union.device)
        self.iou_sum += iou.sum().to(self.iou_sum.device)
        self.count += torch.tensor(iou.numel(), dtype=torch.int64, device=self.count.device)
        self.hits += passes(iou, self.thresholds, self.rules).sum(0).to(self.hits.device)

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
