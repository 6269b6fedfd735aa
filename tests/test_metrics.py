"""RISMetrics against hand-computed values (4x4 masks drawn by hand)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from ris_models.metrics import METRIC_KEYS, RISMetrics, ScoringRules, per_sample_iou


def _mask(*cells: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(4, 4, dtype=torch.bool)
    for y, x in cells:
        m[y, x] = True
    return m


# A: pred 4 px, target 4 px, overlap 2 -> I=2, U=6, IoU=1/3
A = (_mask((0, 0), (0, 1), (1, 0), (1, 1)), _mask((0, 1), (1, 1), (0, 2), (1, 2)))
# B: identical 3 px -> I=3, U=3, IoU=1
B = (_mask((2, 2), (2, 3), (3, 3)), _mask((2, 2), (2, 3), (3, 3)))
# C: empty pred, 2 px target -> I=0, U=2, IoU=0
C = (_mask(), _mask((3, 0), (3, 1)))
# D: both empty -> I=0, U=0, IoU=1 by our convention
D = (_mask(), _mask())
# E: pred 2 px inside a 4 px target -> I=2, U=4, IoU exactly 0.5 (separates > from >=)
E = (_mask((0, 0), (0, 1)), _mask((0, 0), (0, 1), (0, 2), (0, 3)))
SAMPLES = [A, B, C, D, E]


def _stack(samples):
    return torch.stack([p for p, _ in samples]), torch.stack([t for _, t in samples])


def test_per_sample_iou_by_hand():
    preds, targets = _stack(SAMPLES)
    inter, union, iou = per_sample_iou(preds, targets)
    assert inter.tolist() == [2, 3, 0, 0, 2]
    assert union.tolist() == [6, 3, 2, 0, 4]
    assert iou.tolist() == pytest.approx([1 / 3, 1.0, 0.0, 1.0, 0.5])


def test_compute_by_hand_strict():
    metric = RISMetrics()
    preds, targets = _stack(SAMPLES)
    metric.update(preds, targets)
    out = {k: float(v) for k, v in metric.compute().items()}
    assert set(out) == set(METRIC_KEYS)
    assert out["mIoU"] == pytest.approx((1 / 3 + 1 + 0 + 1 + 0.5) / 5)
    assert out["oIoU"] == pytest.approx(7 / 15)
    # strict IoU > X (CRIS): only B and D (IoU 1) pass every threshold; E (0.5) does not pass 0.5
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        assert out[f"P@{t}"] == pytest.approx(2 / 5)


def test_inclusive_counts_equal_iou():
    metric = RISMetrics(rules=ScoringRules(precision_rule=">="))
    metric.update(*_stack(SAMPLES))
    out = metric.compute()
    assert float(out["P@0.5"]) == pytest.approx(3 / 5)
    assert float(out["P@0.6"]) == pytest.approx(2 / 5)


def test_accumulating_batches_equals_one_batch():
    whole = RISMetrics()
    whole.update(*_stack(SAMPLES))
    parts = RISMetrics()
    parts.update(*_stack(SAMPLES[:2]))
    parts.update(*_stack(SAMPLES[2:3]))
    parts.update(*SAMPLES[3])  # a single [H, W] mask is accepted
    parts.update(*_stack(SAMPLES[4:]))
    a, b = whole.compute(), parts.compute()
    for key in METRIC_KEYS:
        assert float(a[key]) == pytest.approx(float(b[key]))


def test_empty_vs_empty_is_perfect_and_reset_works():
    metric = RISMetrics()
    metric.update(*_stack([D, D]))
    out = metric.compute()
    assert float(out["mIoU"]) == 1.0 and float(out["oIoU"]) == 1.0 and float(out["P@0.9"]) == 1.0
    metric.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        assert math.isnan(float(metric.compute()["mIoU"]))  # nothing seen -> nan, not a fake number
    metric.update(*_stack([C]))
    assert float(metric.compute()["mIoU"]) == 0.0


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        RISMetrics().update(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 5, dtype=torch.bool))
