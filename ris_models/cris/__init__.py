"""CRIS-style network: CLIP ResNet + CLIP text (open_clip), text-gated FPN, VL decoder, dynamic-conv projector."""

from ris_models.cris.model import CRISModel

__all__ = ["CRISModel"]
