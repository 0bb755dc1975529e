"""Grounding DINO's and SAM 3's image processors cut in two: resize on the host in
uint8, normalise where the model runs.

The pixels are bit-identical to ``GroundingDinoImageProcessor`` and
``Sam3ImageProcessor`` (transformers' torchvision backend) without padding: the same
output size (``get_size_with_aspect_ratio`` for shortest/longest edges, or one fixed
size), the same antialiased bilinear resize of the uint8 image, then the same float32
``(x - mean) / std`` with the processor's fused mean and std.
``tests/model_loaders/test_split_processor.py`` holds it to that.

Why not call the processor, which a well-kept library provides: it is the host's
largest cost per image, and most of it is not the resize. It copies each image to a
contiguous channels-first tensor before resizing (resizing the channels-last view gives
the same pixels ~2.5x faster), then normalises in float32 on the host, where a GPU
would do it in microseconds from a quarter of the bytes. Host time per image, one
thread (``benchmarks/bench_host_prepare.py``, figures in benchmarks/RESULTS.md):

    JPEG size -> model input    processor   split: host resize   (+ normalise, on CPU)
    640x480   -> 170x128        2.0 ms      0.8 ms               0.17 ms
    1280x960  -> 1066x800       21-23 ms    4.1-5.0 ms           13 ms

Any other processor configuration (padding, another resample filter or size rule, the
PIL backend) is not matched: ``SplitProcessor.matching`` returns None and the backend
uses the processor as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class SplitProcessor:
    """Resize (``__call__``, on the host) and normalise (``normalise``, anywhere) as
    one call of a matched processor does; see the module docstring."""

    mean: tuple[float, ...]  # in 0-255 units: the processor's mean / rescale factor
    std: tuple[float, ...]
    edges: tuple[int, int] | None = None  # (shortest, longest): keeps the aspect ratio
    fixed: tuple[int, int] | None = None  # (height, width): every image stretched to it

    @classmethod
    def matching(cls, image_processor: Any) -> SplitProcessor | None:
        """The split of ``image_processor``, or None when it does anything this
        class does not reproduce exactly."""
        from transformers import GroundingDinoImageProcessor, Sam3ImageProcessor

        # The exact classes: a subclass may resize or normalise its own way.
        if type(image_processor) not in (
            GroundingDinoImageProcessor,
            Sam3ImageProcessor,
        ):
            return None
        if not (
            image_processor.do_resize
            and image_processor.do_rescale
            and image_processor.do_normalize
            and not getattr(image_processor, "do_center_crop", None)
            and _is_bilinear(image_processor.resample)
            and len(image_processor.image_mean) == 3
            and len(image_processor.image_std) == 3
        ):
            return None
        # The processors' own precedence: both edges, else one exact size; the other
        # rules (shortest edge alone, max height and width) are not reproduced.
        size = image_processor.size
        edges = fixed = None
        if size.get("shortest_edge") and size.get("longest_edge"):
            edges = (int(size["shortest_edge"]), int(size["longest_edge"]))
        elif (
            size.get("height")
            and size.get("width")
            and not any(
                size.get(rule) for rule in ("shortest_edge", "max_height", "max_width")
            )
        ):
            fixed = (int(size["height"]), int(size["width"]))
        else:
            return None
        # As the processor fuses rescaling into normalising: float32 tensors scaled
        # by 1 / rescale_factor.
        scale = 1.0 / image_processor.rescale_factor
        return cls(
            tuple((torch.tensor(image_processor.image_mean) * scale).tolist()),
            tuple((torch.tensor(image_processor.image_std) * scale).tolist()),
            edges=edges,
            fixed=fixed,
        )

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the processor resizes an image of this size to."""
        if self.fixed is not None:
            return self.fixed
        from transformers.image_transforms import get_size_with_aspect_ratio

        assert self.edges is not None
        return get_size_with_aspect_ratio((height, width), *self.edges)

    def __call__(
        self,
        *,
        images: Image.Image | Sequence[Image.Image],
        return_tensors: str = "pt",
        **options: Mapping[str, Any],
    ) -> dict[str, torch.Tensor]:
        """Images of one size resized, as ``{"pixel_values": (N, 3, H, W) uint8}``.

        Called like the processor, so ``batching.prepare_images`` drives it (one call
        per size, each image alone when a call fails). ``options`` are the
        processor's (``do_pad=False``); nothing here pads.
        """
        del return_tensors, options  # always torch, never padded
        group = [images] if isinstance(images, Image.Image) else list(images)
        sizes = {image.size for image in group}
        if len(sizes) != 1:
            raise ValueError(f"images of one size expected, got {sorted(sizes)}")
        ((width, height),) = sizes
        shape = self.resized_shape(height, width)
        if 0 in shape:
            raise ValueError(f"it would be resized to {shape[1]}x{shape[0]} px")
        from torchvision.transforms.v2 import functional as tvf

        # (N, H, W, 3) uint8 viewed as (N, 3, H, W): channels-last, no copy.
        stacked = torch.from_numpy(np.stack([_rgb_view(image) for image in group]))
        resized = tvf.resize(
            stacked.permute(0, 3, 1, 2),
            list(shape),
            interpolation=tvf.InterpolationMode.BILINEAR,
            antialias=True,
        )
        return {"pixel_values": resized}

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 3, H, W)`` pixels as the model's float32 input, on their own
        device (the GPU's, once copied there). A new tensor: the caller's stays."""
        if pixels.dtype != torch.uint8:  # float pixels would be normalised in place
            raise TypeError(f"uint8 pixels expected, got {pixels.dtype}")
        mean = _per_channel(self.mean, pixels.device)
        std = _per_channel(self.std, pixels.device)
        return pixels.to(torch.float32).sub_(mean).div_(std)


def model_input(
    pixels: torch.Tensor, device: torch.device, split: SplitProcessor | None
) -> torch.Tensor:
    """A prepared batch as the model takes it, on its device: copied there (without
    waiting, from pinned memory on CUDA) and, when the backend's processor is
    ``split``, normalised there; the processor's own float32 pixels are ready as
    they are."""
    on_device = pixels.to(device, non_blocking=True)
    return on_device if split is None else split.normalise(on_device)


@functools.cache
def _per_channel(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A (3, 1, 1) float32 tensor on ``device``, made once: making it for every batch
    would copy it to the GPU, and wait for the GPU, every time."""
    return torch.tensor(values, device=device).view(-1, 1, 1)


def _rgb_view(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8, read-only: ``np.stack`` copies it into memory torch may own."""
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _is_bilinear(resample: Any) -> bool:
    """Whether a processor's ``resample`` (a PIL filter or torchvision mode) is
    bilinear."""
    from torchvision.transforms.v2 import InterpolationMode

    if isinstance(resample, InterpolationMode):
        return resample == InterpolationMode.BILINEAR
    try:
        return int(resample) == Image.Resampling.BILINEAR
    except (TypeError, ValueError):
        return False
