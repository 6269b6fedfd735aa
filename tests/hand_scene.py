"""A hand-built 20 x 20 SynthRef-like scene shared by the pseudo-label quality tests.

A = small red circle (rows/cols 2-6), B = small blue circle (rows 2-6, cols 12-16), C = big red square
(rows 10-17, cols 4-11).
"""

from __future__ import annotations

import numpy as np

H = W = 20
IMAGE_ID = 1_000_001


def box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """A filled rectangle, rows r0..r1 and columns c0..c1 inclusive."""
    m = np.zeros((H, W), bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


GT = [(box(2, 6, 2, 6), {"shape": "circle", "colour": "red", "size": "small"}),
      (box(2, 6, 12, 16), {"shape": "circle", "colour": "blue", "size": "small"}),
      (box(10, 17, 4, 11), {"shape": "square", "colour": "red", "size": "big"})]
