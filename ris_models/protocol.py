"""Evaluation protocols: every setting between a model's logits (or a mask from elsewhere) and a results table.

A protocol is chosen with the ``eval`` config group (``conf/eval/{project,lavt,cris}.yaml``); the official
pipelines it reproduces (LAVT-RIS ``test.py``, CRIS.pytorch ``engine.inference``) are described setting by setting
in docs/evaluation_protocols.md. Settings:

* ``resize_mode``: how the image becomes the square model input. ``letterbox`` (keep the aspect ratio, whole-pixel
  placement, PIL bilinear), ``stretch`` (PIL bilinear to size x size, as LAVT's torchvision ``Resize`` of a PIL
  image), ``letterbox_affine`` (CRIS: an affine warp with sub-pixel scale and offset, bicubic, mean-colour border);
  ``None`` = as the model was trained.
* ``upsample``: what is resampled from the model's output resolution to the input size: ``probability`` (the
  model's foreground probability) or ``logits``; ``upsample_mode`` (bilinear / bicubic) and ``align_corners``.
* ``decision``: ``threshold`` (probability > ``threshold``; ``None`` = the model's default) or ``argmax``
  (foreground logit > background logit; a 1-channel model: logit > 0).
* ``score_at``: ``original`` (predictions warped back to the image size: crop and bilinear resize for the
  letterbox/stretch modes, the inverse affine warp, bicubic, for ``letterbox_affine``) or ``input`` (targets resized
  to the input square with ``target_resize``: ``bilinear`` then >= 0.5, or PIL ``nearest``).
* ``sentences``: ``all`` (every sentence of every ref, as both official codes do when testing).
* ``iou``, ``empty_iou``, ``precision_rule``, ``threshold_dtype``: the ``ScoringRules`` of ``ris_models.metrics``.
* ``thresholds``: the X of P@X; ``metrics``: the metrics the protocol reports (CRIS reports no oIoU).
* ``input_size``: ``None`` = the model's input size (both official codes test at their training size); needed
  when scoring external masks at input resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.plain import to_plain
from ris_models.metrics import DEFAULT_THRESHOLDS, ScoringRules

EVAL_RESIZE_MODES = ("letterbox", "stretch", "letterbox_affine")
UPSAMPLE_WHAT = ("probability", "logits")
UPSAMPLE_MODES = ("bilinear", "bicubic")
DECISIONS = ("threshold", "argmax")
SCORE_AT = ("original", "input")
TARGET_RESIZES = ("bilinear", "nearest")
SENTENCES = ("all",)
ALL_METRICS = ("mIoU", "oIoU", "P@X")


class ProtocolError(PseudoRISError, ValueError):
    """An evaluation protocol with an unknown or contradictory setting."""


@dataclass(frozen=True)
class EvalProtocol:
    """All settings of one evaluation; the defaults are the project's own protocol (``eval=project``)."""

    name: str = "project"
    resize_mode: str | None = None
    upsample: str = "probability"
    upsample_mode: str = "bilinear"
    align_corners: bool = False
    decision: str = "threshold"
    threshold: float | None = None
    score_at: str = "original"
    target_resize: str = "bilinear"
    sentences: str = "all"
    iou: str = "exact"
    empty_iou: float = 1.0
    precision_rule: str = ">"
    threshold_dtype: str = "float64"
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    metrics: tuple[str, ...] = ALL_METRICS
    input_size: int | None = None

    def __post_init__(self) -> None:
        def check(key: str, allowed: tuple) -> None:
            if getattr(self, key) not in allowed:
                raise ProtocolError(f"eval.{key}={getattr(self, key)!r} (protocol {self.name!r}); "
                                    f"expected one of {allowed}")

        if self.resize_mode is not None:
            check("resize_mode", EVAL_RESIZE_MODES)
        for key, allowed in (("upsample", UPSAMPLE_WHAT), ("upsample_mode", UPSAMPLE_MODES), ("decision", DECISIONS),
                             ("score_at", SCORE_AT), ("target_resize", TARGET_RESIZES),
                             ("sentences", SENTENCES)):
            check(key, allowed)
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown or not self.metrics:
            raise ProtocolError(f"eval.metrics={list(self.metrics)}: choose from {ALL_METRICS}")
        if self.decision == "argmax" and (self.upsample != "logits" or self.threshold is not None):
            raise ProtocolError("eval.decision=argmax compares logits: set eval.upsample=logits and "
                                "eval.threshold=null")
        if self.decision == "threshold" and self.upsample != "probability":
            raise ProtocolError("eval.decision=threshold thresholds probabilities: set eval.upsample=probability")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ProtocolError(f"eval.threshold={self.threshold} is not a probability in [0, 1]")
        if self.resize_mode == "letterbox_affine" and self.score_at == "input":
            raise ProtocolError("eval.resize_mode=letterbox_affine scores at the original size only "
                                "(eval.score_at=original)")
        if self.input_size is not None and int(self.input_size) <= 0:
            raise ProtocolError(f"eval.input_size must be positive, got {self.input_size}")
        try:
            self.rules  # noqa: B018 - validates the scoring settings
        except ValueError as exc:
            raise ProtocolError(f"eval: {exc} (protocol {self.name!r})") from None

    @property
    def rules(self) -> ScoringRules:
        return ScoringRules(iou=self.iou, empty_iou=float(self.empty_iou), precision_rule=self.precision_rule,
                            threshold_dtype=self.threshold_dtype)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The reported table columns, in the usual order."""
        keys: list[str] = [m for m in ("mIoU", "oIoU") if m in self.metrics]
        if "P@X" in self.metrics:
            keys += [f"P@{t}" for t in self.thresholds]
        return tuple(keys)

    def resolved(self, *, threshold: float, resize_mode: str, input_size: int) -> "EvalProtocol":
        """Fill the ``None`` settings from the model (threshold, input size) and its training (resize mode)."""
        if self.input_size is not None and int(self.input_size) != int(input_size):
            raise ProtocolError(f"eval.input_size={self.input_size} but the model takes {input_size} px inputs; "
                                "leave eval.input_size=null to use the model's size")
        return replace(self, threshold=None if self.decision == "argmax" else
                       float(threshold if self.threshold is None else self.threshold),
                       resize_mode=self.resize_mode or resize_mode, input_size=int(input_size))

    def as_dict(self) -> dict[str, Any]:
        """Every setting, JSON-plain (written into the results JSON)."""
        out = asdict(self)
        out["thresholds"], out["metrics"] = list(self.thresholds), list(self.metrics)
        return out

    def describe(self) -> str:
        """A few lines for the console and the Markdown file: the whole protocol, readable."""
        resize = {"letterbox": "letterbox (aspect kept, whole-pixel placement, bilinear)",
                  "stretch": "stretch to a square (bilinear)",
                  "letterbox_affine": "letterbox by affine warp (sub-pixel placement, bicubic)",
                  None: "as in training"}[self.resize_mode]
        size = f"{self.input_size} px" if self.input_size else "the model's input size"
        corners = "aligned corners" if self.align_corners else "half-pixel centres"
        if self.decision == "argmax":
            decide = "argmax (foreground logit > background logit)"
        else:
            decide = f"foreground probability > {self.threshold if self.threshold is not None else 'model default'}"
        if self.score_at == "original":
            back = "inverse affine warp, bicubic" if self.resize_mode == "letterbox_affine" else "crop + bilinear"
            where = f"IoU at the original image size (predictions warped back: {back}; targets as annotated)"
        else:
            where = f"IoU at the input size (targets resized with {self.target_resize})"
        iou = "I/(U+1e-6)" if self.iou == "eps" else f"I/U, empty vs empty = {float(self.empty_iou):g}"
        thr = ", ".join(f"{t:g}" for t in self.thresholds)
        prec = f"P@X: IoU {self.precision_rule} X ({self.threshold_dtype} X in {thr})"
        return (f"protocol {self.name}: input {resize} at {size}; {self.upsample} upsampled {self.upsample_mode} "
                f"with {corners}; {decide}; {where}; {self.sentences} sentences of every ref; IoU {iou}; {prec}; "
                f"reports {', '.join(self.metrics)}")


def protocol_from_config(node: Any) -> EvalProtocol:
    """The ``eval`` config node (a mapping; ``None`` = project defaults) -> ``EvalProtocol`` (validated)."""
    if node is None:
        return EvalProtocol()
    if isinstance(node, EvalProtocol):
        return node
    values = dict(to_plain(node))
    known = {f.name for f in fields(EvalProtocol)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ProtocolError(f"unknown eval setting(s) {unknown}; known: {sorted(known)}")
    for key in ("thresholds", "metrics"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    if values.get("thresholds") is not None:
        values["thresholds"] = tuple(float(t) for t in values["thresholds"])
    values = {k: v for k, v in values.items() if v is not None or k in ("threshold", "resize_mode", "input_size")}
    return EvalProtocol(**values)


def legacy_protocol(threshold: float | None = None, eval_resolution: str | None = None) -> EvalProtocol:
    """The project protocol from the options of checkpoints written before protocols existed."""
    return EvalProtocol(threshold=threshold, score_at=eval_resolution or "original")
