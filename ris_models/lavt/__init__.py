"""LAVT-style network: Swin (timm) with pixel-word attention + language gates inside the encoder, BERT, light decoder."""

from ris_models.lavt.model import LAVTModel

__all__ = ["LAVTModel"]
