"""Evaluation protocols (conf/eval/*.yaml): each convention against hand-computed values, and the 200-pair table.

The official conventions are re-implemented here, independently of ``ris_models``, from the formulas of LAVT-RIS
``test.py`` (commit 1da0af9) and CRIS.pytorch ``engine/engine.py`` ``inference`` (commit e596332):

* LAVT: ``I, U = sum(pred & gt), sum(pred | gt)``; ``iou = 0.0 if U == 0 else I * 1.0 / U``; ``P@X`` counts
  ``iou >= X`` (python floats); mIoU = mean of the IoUs; oIoU = sum(I) / sum(U).
* CRIS: ``iou = sum(inter) / (sum(union) + 1e-6)`` (numpy float64); ``P@X`` = mean of ``iou_list > thres`` for
  ``thres`` in ``torch.arange(0.5, 1.0, 0.1)`` (float32); mIoU = ``iou_list.mean()``; no oIoU.

Run ``python tests/test_protocols.py`` to print the table that docs/evaluation_protocols.md holds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ris_models.eval_transforms import (decision_scores, inverse_affine_warp, letterbox_affine_image,
                                        logits_to_masks, resize_mask_nearest)
from ris_models.metrics import RISMetrics, metrics_to_floats
from ris_models.protocol import EvalProtocol, ProtocolError, protocol_from_config
from ris_models.transforms import resize_meta

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "evaluation_protocols.md"
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def protocol(name: str) -> EvalProtocol:
    return protocol_from_config(OmegaConf.load(ROOT / "conf" / "eval" / f"{name}.yaml"))


def score(name: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    p = protocol(name)
    metric = RISMetrics(p.thresholds, rules=p.rules)
    for pred, target in pairs:
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    values = metrics_to_floats(metric.compute())
    return {k: v for k, v in values.items() if k in p.metric_keys}


def pair_with_iou(inter: int, union: int, side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Target = first ``union`` pixels, prediction = first ``inter`` of them: IoU = inter / union exactly."""
    target = np.zeros(side * side, bool)
    target[:union] = True
    pred = np.zeros(side * side, bool)
    pred[:inter] = True
    return pred.reshape(side, side), target.reshape(side, side)


# ----------------------------------------------------------------------------------------- one convention each
def test_precision_rule_at_exactly_x():
    pairs = [pair_with_iou(5, 10)]  # IoU exactly 0.5
    assert score("project", pairs)["P@0.5"] == 0.0  # IoU > 0.5: no
    assert score("lavt", pairs)["P@0.5"] == 1.0  # LAVT: IoU >= 0.5: yes
    assert score("cris", pairs)["P@0.5"] == 0.0  # CRIS: 5 / (10 + 1e-6) < 0.5


def test_cris_float32_threshold_edge_at_exactly_07():
    # float32(0.7) = 0.699999988079071; 7 / (10 + 1e-6) = 0.69999993 is below it, 70 / (100 + 1e-6) = 0.6999999993
    # is above it: the same exact IoU 0.7 fails with a 10-pixel union and passes with a 100-pixel one
    assert score("cris", [pair_with_iou(7, 10)])["P@0.7"] == 0.0
    assert score("cris", [pair_with_iou(70, 100)])["P@0.7"] == 1.0
    assert score("cris", [pair_with_iou(70, 100)])["P@0.6"] == 1.0  # 0.6 -> float32 0.600000024: IoU 0.7 passes
    assert score("project", [pair_with_iou(70, 100)])["P@0.7"] == 0.0  # float64 0.7, strict: never
    assert score("lavt", [pair_with_iou(7, 10)])["P@0.7"] == 1.0  # >= with float64: always
    # 0.8 -> float32 0.800000011920929 is above 0.8: IoU 0.8 never passes CRIS's P@0.8, whatever the union
    assert score("cris", [pair_with_iou(200, 250)])["P@0.8"] == 0.0


def test_cris_iou_is_below_exact_by_the_epsilon():
    out = score("cris", [pair_with_iou(3, 4)])
    assert out["mIoU"] == 3 / (4 + 1e-6) and out["mIoU"] < 0.75
    assert "oIoU" not in out  # CRIS reports mIoU and P@X only
    assert score("project", [pair_with_iou(3, 4)])["mIoU"] == 0.75


def test_empty_prediction_of_empty_target():
    both_empty = [(np.zeros((4, 4), bool), np.zeros((4, 4), bool))]
    assert score("project", both_empty)["mIoU"] == 1.0 and score("project", both_empty)["P@0.9"] == 1.0
    assert score("lavt", both_empty)["mIoU"] == 0.0 and score("lavt", both_empty)["P@0.5"] == 0.0
    assert score("cris", both_empty)["mIoU"] == 0.0 and score("cris", both_empty)["P@0.5"] == 0.0


def test_lavt_targets_resized_with_nearest():
    # a 2x4 mask whose columns are [0, 1, 0, 0] stretched to 3x3: PIL NEAREST takes source column
    # floor((x + 0.5) * 4 / 3) = 0, 2, 3 -> all background (the thin object vanishes; bilinear would keep it)
    mask = np.array([[0, 1, 0, 0]] * 2, bool)
    assert not resize_mask_nearest(mask, resize_meta(2, 4, 3, "stretch"), 3).any()
    mask = np.array([[1, 1, 0, 1]] * 2, bool)  # columns 0, 2, 3 -> 1, 0, 1; rows floor((y + 0.5) * 2 / 3) = 0, 1, 1
    expected = torch.tensor([[1, 0, 1]] * 3, dtype=torch.bool)
    assert torch.equal(resize_mask_nearest(mask, resize_meta(2, 4, 3, "stretch"), 3), expected)


class _TwoClass:
    """Stands in for a model: only ``foreground_prob`` is used (by the probability path)."""

    def foreground_prob(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=1)[:, 1]


def test_lavt_upsamples_logits_with_aligned_corners_then_argmax():
    # background logit 0, foreground logits [-5, 2] along x, upsampled 2 -> 4 with aligned corners:
    # x = 0, 1/3, 2/3, 1 of the way -> -5, -2.667, -0.333, 2 -> argmax picks the foreground at x = 3 only.
    # (Half-pixel centres would give -5, -3.25, 0.25, 2 and pick x = 2 as well.)
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[-5.0, 2.0], [-5.0, 2.0]])
    lavt = protocol("lavt").resolved(threshold=0.5, resize_mode="stretch", input_size=4)
    masks = logits_to_masks(_TwoClass(), logits, [{}], lavt, (4, 4))
    assert masks[0].tolist() == [[False, False, False, True]] * 4
    margin, cut = decision_scores(_TwoClass(), logits, lavt, (4, 4))
    assert cut == 0.0 and margin[0, 0].tolist() == pytest.approx([-5.0, -8 / 3, -1 / 3, 2.0], abs=1e-6)
    half = EvalProtocol(name="x", upsample="logits", decision="argmax", align_corners=False, score_at="input")
    assert logits_to_masks(_TwoClass(), logits, [{}], half, (4, 4))[0][0].tolist() == [False, False, True, True]


def test_letterbox_affine_forward_and_inverse_warp():
    # a 2x4 image into 8x8: s = min(8/2, 8/4) = 2, offsets bx = 0, by = (8 - 4) / 2 = 2; input pixel (x', y')
    # samples the image at (x' / 2, (y' - 2) / 2): row y' = 2 is image row 0 at even x', row y' = 0 is the border
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 5
    out = letterbox_affine_image(image, 8, border=(10.0, 20.0, 30.0))
    assert (out[0] == [10, 20, 30]).all()
    assert (out[2, ::2] == image[0]).all() and (out[4, ::2] == image[1]).all()
    # back: original pixel (x, y) samples the input map at (2x, 2y + 2); the map f = x' + 10 y' gives 2x + 20y + 20
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    back = inverse_affine_warp(xs + 10 * ys, 2, 4)
    np.testing.assert_allclose(back.numpy(), [[20, 22, 24, 26], [40, 42, 44, 46]], atol=1e-4)


def test_cris_pipeline_thresholds_after_the_inverse_warp():
    # a 1-channel model whose sigmoid is 0.4 everywhere: above CRIS's 0.35 (everything foreground), below the
    # project default 0.5 of a LAVT-style model
    class _OneClass:
        def foreground_prob(self, logits):
            return torch.sigmoid(logits.float())[:, 0]

    logit = float(np.log(0.4 / 0.6))
    logits = torch.full((1, 1, 2, 2), logit)
    cris = protocol("cris").resolved(threshold=0.5, resize_mode="letterbox", input_size=8)
    masks = logits_to_masks(_OneClass(), logits, [{"orig_h": 2, "orig_w": 4}], cris, (8, 8))
    assert masks[0].shape == (2, 4) and masks[0].all()
    project = protocol("project").resolved(threshold=0.5, resize_mode="letterbox", input_size=8)
    meta = resize_meta(2, 4, 8, "letterbox").as_dict()
    assert not logits_to_masks(_OneClass(), logits, [meta], project, (8, 8))[0].any()


def test_protocol_settings_are_checked():
    with pytest.raises(ProtocolError, match="argmax"):
        EvalProtocol(decision="argmax")  # argmax needs logits
    with pytest.raises(ProtocolError, match="empty_iou"):
        EvalProtocol(iou="eps", empty_iou=1.0)
    with pytest.raises(ProtocolError, match="unknown eval setting"):
        protocol_from_config({"treshold": 0.4})
    with pytest.raises(ProtocolError, match="input_size"):
        EvalProtocol(input_size=480).resolved(threshold=0.5, resize_mode="letterbox", input_size=128)
    described = protocol("cris").describe()
    assert "0.35" in described and "I/(U+1e-6)" in described and "float32" in described


def test_every_protocol_scores_every_sentence():
    for name in ("project", "lavt", "cris"):
        assert protocol(name).sentences == "all"


def test_checkpoint_protocol_is_plain_and_old_checkpoints_load_as_project(tmp_path):
    from ris_models.lit_module import RISLitModule, load_checkpoint
    from ris_models.registry import build_model

    lit = RISLitModule(build_model("cris_tiny", input_size=32), eval_protocol=protocol("lavt"))
    assert lit.hparams["eval_protocol"] == protocol("lavt").as_dict()  # plain data in the checkpoint
    assert lit.protocol.decision == "argmax" and lit.protocol.input_size == 32
    # a checkpoint written before protocols existed: top-level threshold / eval_resolution hyper-parameters
    ckpt = {"state_dict": lit.state_dict(), "hyper_parameters": {"lr": 1e-4, "threshold": 0.2,
                                                                 "eval_resolution": "input"}}
    lit.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "old.ckpt")
    old = load_checkpoint(tmp_path / "old.ckpt").protocol
    assert (old.name, old.threshold, old.score_at, old.precision_rule) == ("project", 0.2, "input", ">")


def test_results_of_another_protocol_never_merge(tmp_path):
    from ris_models.evaluation import write_results

    lavt = protocol("lavt")
    write_results({"val": {"mIoU": 0.5, "n": 2}}, tmp_path, "ds", {"checkpoint": "a"}, lavt)
    write_results({"testA": {"mIoU": 0.25, "n": 2}}, tmp_path, "ds", {"checkpoint": "a"}, lavt)
    path = tmp_path / "metrics_ds_lavt.json"
    assert set(json.loads(path.read_text())["splits"]) == {"val", "testA"}  # same protocol: splits accumulate
    changed = EvalProtocol(**{**vars(lavt), "precision_rule": ">"})
    write_results({"testA": {"mIoU": 0.75, "n": 2}}, tmp_path, "ds", {"checkpoint": "a"}, changed)
    record = json.loads(path.read_text())
    assert record["splits"] == {"testA": {"mIoU": 0.75, "n": 2}} and record["protocol"]["precision_rule"] == ">"


# ------------------------------------------------------------------------------------- the 200 hand-made pairs
def handmade_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """4 both empty, 4 empty prediction, 4 empty target, 20 at IoU exactly 0.5..0.9 (4 unions each: 10, 20, 60,
    100 pixels), 8 perfect, 160 random rectangles and shifted copies; 16x16 masks, seed 0."""
    rng = np.random.default_rng(0)
    side = 16

    def rect() -> np.ndarray:
        m = np.zeros((side, side), bool)
        y0, x0 = rng.integers(0, side - 1, 2)
        h, w = rng.integers(1, side - y0 + 1), rng.integers(1, side - x0 + 1)
        m[y0:y0 + h, x0:x0 + w] = True
        return m

    empty = np.zeros((side, side), bool)
    pairs = [(empty, empty)] * 4
    pairs += [(empty, rect()) for _ in range(4)]
    pairs += [(rect(), empty) for _ in range(4)]
    pairs += [pair_with_iou(round(x * u), u) for x in THRESHOLDS for u in (10, 20, 60, 100)]
    for _ in range(8):
        m = rect()
        pairs.append((m, m.copy()))
    for _ in range(160):  # a target and a prediction that overlaps it more or less: every IoU from 0 to 1
        target, pred = rect(), np.zeros((side, side), bool)
        ys, xs = np.nonzero(target)
        dy, dx = rng.integers(-3, 4, 2)
        pred[np.clip(ys + dy, 0, side - 1), np.clip(xs + dx, 0, side - 1)] = True
        pairs.append((pred, target))
    assert len(pairs) == 200
    return pairs


def lavt_official(pairs) -> dict[str, float]:
    cum_i = cum_u = 0
    ious, correct = [], np.zeros(5, dtype=np.int32)
    for pred, gt in pairs:
        i, u = np.sum(np.logical_and(pred, gt)), np.sum(np.logical_or(pred, gt))
        this_iou = 0.0 if u == 0 else i * 1.0 / u
        ious.append(this_iou)
        cum_i, cum_u = cum_i + i, cum_u + u
        for k, x in enumerate([.5, .6, .7, .8, .9]):
            correct[k] += this_iou >= x
    out = {"mIoU": float(np.mean(np.array(ious))), "oIoU": float(cum_i / cum_u)}
    out.update({f"P@{x}": float(c) / len(pairs) for x, c in zip(THRESHOLDS, correct)})
    return out


def cris_official(pairs) -> dict[str, float]:
    ious = [np.sum(np.logical_and(p, g)) / (np.sum(np.logical_or(p, g)) + 1e-6) for p, g in pairs]
    iou_list = torch.from_numpy(np.stack(ious))
    out = {"mIoU": iou_list.mean().item()}
    for x, thres in zip(THRESHOLDS, torch.arange(0.5, 1.0, 0.1)):
        out[f"P@{x}"] = (iou_list > thres).float().mean().item()
    return out


def project_definition(pairs) -> dict[str, float]:
    """The project's stated definition: I/U, empty vs empty = 1, P@X counts IoU > X."""
    inter = [int((p & g).sum()) for p, g in pairs]
    union = [int((p | g).sum()) for p, g in pairs]
    ious = [i / u if u else 1.0 for i, u in zip(inter, union)]
    out = {"mIoU": sum(ious) / len(ious), "oIoU": sum(inter) / sum(union)}
    out.update({f"P@{x}": sum(v > x for v in ious) / len(ious) for x in THRESHOLDS})
    return out


COLUMNS = ("mIoU", "oIoU") + tuple(f"P@{x}" for x in THRESHOLDS)
ROWS = (("project", "ours, `eval=project`", None), ("project", "the stated definition", project_definition),
        ("lavt", "ours, `eval=lavt`", None), ("lavt", "LAVT-RIS test.py formulas", lavt_official),
        ("cris", "ours, `eval=cris`", None), ("cris", "CRIS.pytorch inference formulas", cris_official))


def table_rows() -> list[tuple[str, str, dict[str, float]]]:
    pairs = handmade_pairs()
    return [(name, who, score(name, pairs) if fn is None else fn(pairs)) for name, who, fn in ROWS]


def markdown_table() -> str:
    lines = ["| protocol | computed by | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for name, who, values in table_rows():
        cells = [f"{values[k]:.5f}" if k in values else "-" for k in COLUMNS]
        lines.append(f"| {name} | {who} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_ours_equal_the_official_conventions_on_200_pairs():
    rows = table_rows()
    for (name, _, ours), (other, _, official) in zip(rows[::2], rows[1::2]):
        assert name == other and set(ours) == set(official)
        for key in ours:
            if key.startswith("P@"):  # a share of 200 (CRIS's is a float32 mean): compare the counts
                assert round(ours[key] * 200) == round(official[key] * 200), (name, key)
                assert ours[key] == pytest.approx(official[key], abs=1e-6)
            else:
                assert ours[key] == pytest.approx(official[key], abs=1e-12), (name, key)
    by_name = {name: values for name, _, values in rows[::2]}
    # the conventions matter: the 4 both-empty pairs are worth 4/200 of mIoU
    assert by_name["project"]["mIoU"] - by_name["lavt"]["mIoU"] == pytest.approx(4 / 200, abs=1e-12)


def test_the_documented_table_is_the_measured_one():
    text = DOC.read_text()
    for line in markdown_table().splitlines()[2:]:
        assert line in text, f"docs/evaluation_protocols.md is out of date; rerun python tests/test_protocols.py:\n{line}"
    assert re.search(r"200 hand-made", text)


if __name__ == "__main__":
    print(markdown_table())
