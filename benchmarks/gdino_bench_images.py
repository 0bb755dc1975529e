"""The benchmarks' image set and class list: photos or synthetic images, JPEG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# Real photos that ship inside scikit-image (no download); grayscale ones become RGB.
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "moon",
    "coins",
    "clock",
    "grass",
    "gravel",
    "brick",
)

# Single words of the random models' vocabulary, so each class is one token there too.
CLASS_WORDS = (
    "person",
    "cat",
    "dog",
    "car",
    "rocket",
    "cup",
    "bird",
    "horse",
    "bicycle",
    "bottle",
    "chair",
    "table",
    "tree",
    "flower",
    "bus",
    "truck",
    "ball",
    "fish",
    "plate",
    "window",
)


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> (640, 480), width first like PIL."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def class_names(count: int) -> list[str]:
    """The first ``count`` benchmark classes."""
    if not 1 <= count <= len(CLASS_WORDS):
        raise ValueError(f"--classes must be between 1 and {len(CLASS_WORDS)}")
    return list(CLASS_WORDS[:count])


def sample_images(
    count: int, size_wh: tuple[int, int]
) -> tuple[list[Image.Image], str]:
    """``count`` RGB images, all resized to ``size_wh``, and where they came from.

    One common size because the backend batches only images of the same resized shape;
    with mixed sizes the pipeline would run smaller batches than the raw forward it is
    compared with. Real scikit-image photos when installed (cycled, mirrored on the
    second pass so no two files are identical), else smooth synthetic images that
    compress like photos.
    """
    try:
        import skimage.data
    except ImportError:
        return _synthetic_images(count, size_wh), "synthetic (scikit-image missing)"
    images = []
    for index in range(count):
        name = SKIMAGE_PHOTOS[index % len(SKIMAGE_PHOTOS)]
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        if (index // len(SKIMAGE_PHOTOS)) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        images.append(image.resize(size_wh, Image.Resampling.BILINEAR))
    return images, "scikit-image photos"


def _synthetic_images(count: int, size_wh: tuple[int, int]) -> list[Image.Image]:
    """Upsampled low-resolution noise plus grain: decodes and resizes like a photo."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize(size_wh, Image.Resampling.BICUBIC)
        grain = rng.normal(0, 8, size=(size_wh[1], size_wh[0], 3))
        pixels = np.clip(np.asarray(smooth, dtype=np.float64) + grain, 0, 255)
        images.append(Image.fromarray(pixels.astype(np.uint8)))
    return images


def write_jpegs(images: Sequence[Image.Image], folder: Path) -> list[Path]:
    """Save as JPEG (quality 90): the files the pipeline and the naive loop decode."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"image-{index:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def read_rgb(path: Path) -> Image.Image:
    """Decode one file to RGB, as every mode does before preprocessing."""
    with Image.open(path) as opened:
        return opened.convert("RGB")
