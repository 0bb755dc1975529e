"""Masks for the mask and segmentation-export tests: holes, several parts, one pixel,
diagonal touches. A helper module, not a test module."""

from __future__ import annotations

import numpy as np


def boxes_mask(
    height: int, width: int, *boxes: tuple[int, int, int, int]
) -> np.ndarray:
    """A bool mask; each box (x0, y0, x1, y1) is set, or cleared if x0 > x1 (a hole)."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        if x0 <= x1:
            mask[y0:y1, x0:x1] = True
        else:
            mask[y0:y1, x1:x0] = False
    return mask


def disk(height: int, width: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    return (x - cx) ** 2 + (y - cy) ** 2 <= r**2


SHAPES = {
    "empty": boxes_mask(12, 10),
    "full": boxes_mask(12, 10, (0, 0, 10, 12)),
    "one pixel": boxes_mask(12, 10, (3, 4, 4, 5)),
    "square": boxes_mask(30, 40, (5, 5, 30, 30)),
    "hole": boxes_mask(30, 40, (5, 5, 30, 25), (20, 10, 12, 18)),
    "two parts": boxes_mask(30, 40, (2, 2, 10, 10), (20, 15, 38, 28)),
    "hole and two parts": boxes_mask(
        40, 50, (5, 5, 30, 30), (20, 12, 12, 20), (35, 32, 48, 38)
    ),
    "two holes": boxes_mask(30, 40, (2, 2, 38, 28), (10, 5, 5, 10), (30, 15, 20, 25)),
    "disk with a disk hole": disk(41, 45, 22, 20, 15) & ~disk(41, 45, 20, 18, 5),
    "diagonal touch": np.eye(6, dtype=bool) | np.eye(6, k=1, dtype=bool),
    "thin line": boxes_mask(10, 20, (2, 4, 18, 5)),
}
