"""LAVT-style network: Swin (padding and shifting as LAVT), pixel-word attention + language gates inside the
encoder, BERT, light decoder."""

from ris_models.lavt.model import LAVTModel

__all__ = ["LAVTModel"]
