"""Batching images without padding, shared by the transformers detectors.

Padding an image to share a batch with a bigger one changes DETR-family outputs (the
padded area takes part in attention), so a label would depend on which images happened
to share a batch. These helpers batch only images of the same resized shape.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    """Each image through ``image_processor`` on its own, so none is padded.

    Images are processed on a few threads (resizing and normalising release the GIL):
    serially, this host-side work alone would cap a fast GPU at ~50 images/s.
    """

    def prepare(item: tuple[int, Image.Image]) -> PreparedImage:
        index, image = item
        pixels = image_processor(images=image.convert("RGB"), return_tensors="pt")
        values = pixels["pixel_values"][0]
        return PreparedImage(index, values, image.height, image.width)

    if len(images) < 2:
        return [prepare(item) for item in enumerate(images)]
    return list(_preprocess_pool().map(prepare, enumerate(images)))


@functools.cache
def _preprocess_pool() -> ThreadPoolExecutor:
    """One small pool per process, shared by every model (created on first use)."""
    workers = max(1, min(4, (os.cpu_count() or 1)))
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")


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
