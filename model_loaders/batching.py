"""Batching images without padding, shared by the transformers detectors.

Padding an image to share a batch with a bigger one changes DETR-family outputs (the
padded area takes part in attention), so a label would depend on which images happened
to share a batch. These helpers batch only images of the same resized shape.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from PIL import Image

T = TypeVar("T")


@dataclass
class PreparedImage:
    """An image resized and normalised by its processor, and where it came from."""

    index: int  # position in the caller's list
    pixel_values: torch.Tensor  # (3, H, W) at the processor's resized shape
    height: int  # original size: post-processing scales boxes back to it
    width: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixel_values.shape)


def prepare_images(
    images: Sequence[Image.Image], image_processor: Callable
) -> list[PreparedImage]:
    """Each image through ``image_processor`` on its own, so none is padded."""
    return [
        PreparedImage(
            index,
            image_processor(images=image.convert("RGB"), return_tensors="pt")[
                "pixel_values"
            ][0],
            image.height,
            image.width,
        )
        for index, image in enumerate(images)
    ]


def same_shape_batches(
    items: Sequence[T], *, shape: Callable[[T], tuple[int, ...]], batch_size: int
) -> list[list[T]]:
    """``items`` grouped by ``shape``, each group cut into batches of ``batch_size``."""
    buckets: dict[tuple[int, ...], list[T]] = defaultdict(list)
    for item in items:
        buckets[shape(item)].append(item)
    return [
        group[start : start + batch_size]
        for group in buckets.values()
        for start in range(0, len(group), batch_size)
    ]
