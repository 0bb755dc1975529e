"""Grounding DINO's and SAM 3's processors split between host and device give the
processors' pixels exactly, and are used only where they do."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    GroundingDinoImageProcessor,
    Sam3ImageProcessor,
)

from model_loaders.grounding_dino import GroundingDinoModel
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from model_loaders.split_processor import SplitProcessor
from tests.detections import assert_same_detections

# (width, height): landscape, portrait, odd sizes, upscaled, a strip that resizes to
# one pixel row, and the GPU benchmark's photos.
SIZES = [(640, 480), (480, 640), (641, 479), (333, 1001), (97, 13), (3000, 20)]
# Grounding DINO's size rules (the tiny test model's edges, the real model's, one
# fixed size) and SAM 3's (its real 1008 px square).
PROCESSORS = [
    ("grounding-dino", {"shortest_edge": 128, "longest_edge": 192}),
    ("grounding-dino", {"shortest_edge": 800, "longest_edge": 1333}),
    ("grounding-dino", {"height": 96, "width": 160}),
    ("sam3", {"height": 1008, "width": 1008}),
]


@pytest.fixture(scope="module")
def image_processor(tiny_grounding_dino: str):
    return AutoProcessor.from_pretrained(tiny_grounding_dino).image_processor


def _noise(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Random pixels: every rounding difference of a resize would show."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8)).convert(mode)


@pytest.mark.parametrize(("model", "size"), PROCESSORS)
def test_split_pixels_equal_the_processors_bit_for_bit(image_processor, model, size):
    if model == "sam3":
        processor = Sam3ImageProcessor(size=size)
    else:
        processor = copy.deepcopy(image_processor)
        processor.size = size
    split = SplitProcessor.matching(processor)
    assert split is not None
    compared = 0
    for seed, (width, height) in enumerate(SIZES):
        images = [_noise(width, height, seed * 3 + k) for k in range(3)]
        expected = processor(images=images, return_tensors="pt", do_pad=False)
        expected = expected["pixel_values"]

        resized = split(images=images, do_pad=False)["pixel_values"]
        assert resized.dtype == torch.uint8  # a quarter of float32's bytes to copy
        assert torch.equal(split.normalise(resized), expected)
        # One image alone: the same pixels as in its group.
        alone = split(images=images[1])["pixel_values"]
        assert torch.equal(split.normalise(alone), expected[1:2])
        assert tuple(expected.shape[-2:]) == split.resized_shape(height, width)
        compared += 1
    assert compared == len(SIZES)


def test_images_of_other_modes_are_taken_as_rgb(image_processor):
    split = SplitProcessor.matching(image_processor)
    images = [_noise(120, 90, 1, "L"), _noise(120, 90, 2, "RGBA")]
    rgb = [image.convert("RGB") for image in images]
    expected = image_processor(images=rgb, return_tensors="pt", do_pad=False)
    got = split.normalise(split(images=images)["pixel_values"])
    assert torch.equal(got, expected["pixel_values"])


def test_normalise_takes_uint8_and_leaves_the_input_alone(image_processor):
    split = SplitProcessor.matching(image_processor)
    pixels = split(images=[_noise(60, 40, 3)])["pixel_values"]
    before = pixels.clone()
    assert split.normalise(pixels).dtype == torch.float32
    assert torch.equal(pixels, before)
    with pytest.raises(TypeError, match="uint8"):
        split.normalise(pixels.float())


def test_images_of_two_sizes_in_one_call_are_refused(image_processor):
    split = SplitProcessor.matching(image_processor)
    with pytest.raises(ValueError, match="one size"):
        split(images=[_noise(60, 40, 1), _noise(40, 60, 2)])


@pytest.mark.parametrize(
    "change",
    [
        {"resample": Image.Resampling.BICUBIC},
        {"size": {"max_height": 128, "max_width": 128}},
        {"do_normalize": False},
        {"do_rescale": False},
        {"do_resize": False},
    ],
    ids=["bicubic", "max-size", "no-normalize", "no-rescale", "no-resize"],
)
def test_a_processor_configured_otherwise_is_not_split(image_processor, change):
    processor = copy.deepcopy(image_processor)
    for name, value in change.items():
        setattr(processor, name, value)
    assert SplitProcessor.matching(processor) is None


class _Custom(GroundingDinoImageProcessor):
    """A subclass might resize or normalise its own way."""


def test_a_processor_subclass_is_not_split(image_processor):
    assert SplitProcessor.matching(_Custom(**image_processor.to_dict())) is None


def test_the_backend_sends_uint8_and_labels_as_the_unsplit_processor(
    tiny_grounding_dino: str, photos
):
    """The backend's batches are uint8; the labels equal those of the same backend
    with the split turned off (the processor's float32 pixels)."""
    ontology = Ontology.from_class_options(["person", "cat", "rocket"])
    spec = ModelSpec(model=tiny_grounding_dino, device="cpu", batch_size=2)
    split = GroundingDinoModel.load(spec)
    processor = copy.deepcopy(split.processor)
    processor.image_processor = _Custom(**processor.image_processor.to_dict())
    unsplit = GroundingDinoModel(split.model, processor, spec, split.device)

    images = photos + photos[:2]

    def dtypes(backend: GroundingDinoModel) -> set[torch.dtype]:
        return {b.pixel_values.dtype for b in backend.prepare(images, ontology).batches}

    assert dtypes(split) == {torch.uint8}  # a quarter of the bytes to the device
    assert dtypes(unsplit) == {torch.float32}
    ours = split.predict(images, ontology, confidence_floor=0.1)
    theirs = unsplit.predict(images, ontology, confidence_floor=0.1)
    assert_same_detections(ours, theirs, images=len(images))
