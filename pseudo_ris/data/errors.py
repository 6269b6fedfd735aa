"""Exceptions with messages that name the offending file, ref or key.

Users hit these on their own data (a truncated refs file, a missing image), so every error says *which* thing
is wrong and, where possible, what to do about it, instead of surfacing a traceback from deep inside pickle/PIL.
"""

from __future__ import annotations


class PseudoRISError(Exception):
    """Base class for all errors raised deliberately by this project."""


class ReferDataError(PseudoRISError):
    """A REFER-layout dataset (refs file, instances.json, image) is missing or malformed."""


class EmptyMaskError(ReferDataError):
    """An annotation's segmentation decodes to a mask with no foreground pixel."""


class GeometryError(ReferDataError):
    """An annotation whose geometry cannot be right: a mask of another size than its image, an annotation on
    another image than its ref, a malformed polygon, an image missing from the images list."""


class UnknownDatasetError(ReferDataError):
    """A dataset name that is neither registered nor present under the data root."""
