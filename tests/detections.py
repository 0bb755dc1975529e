"""Comparing two backends' predictions, image by image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import supervision as sv


def assert_same_detections(
    ours: Sequence[sv.Detections], theirs: Sequence[sv.Detections], *, images: int
) -> None:
    """Both give ``images`` images the same boxes, scores, classes, prompts and
    masks (when they have them), and every image has boxes: an empty comparison
    would pass whatever the backends did."""
    assert len(ours) == len(theirs) == images
    for one, other in zip(ours, theirs, strict=True):
        assert len(one) > 0
        np.testing.assert_array_equal(one.xyxy, other.xyxy)
        np.testing.assert_array_equal(one.confidence, other.confidence)
        np.testing.assert_array_equal(one.class_id, other.class_id)
        np.testing.assert_array_equal(one.data["prompt"], other.data["prompt"])
        assert (one.mask is None) == (other.mask is None)
        if one.mask is not None:
            np.testing.assert_array_equal(one.mask, other.mask)
