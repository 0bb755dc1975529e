"""SAM 3 on tiny random weights (saved with save_pretrained, loaded through the real
``ModelSpec`` -> ``cache.get_model`` path), against the model's reference use: one
``Sam3Processor(images=..., text=...)`` -> ``Sam3Model`` ->
``post_process_instance_segmentation`` call per (image, prompt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_loaders import cache
from model_loaders.backends import Sam3Options, backend_class
from model_loaders.batching import PreparesAhead
from model_loaders.grounding_dino_prompts import PromptTooLongError
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelLoadError, ModelSpec
from model_loaders.sam3 import Sam3Backend
from tests.detections import assert_same_detections

# Three classes, one with two descriptions: four prompts per image.
ONTOLOGY = Ontology.from_class_options(["person", "cat: cat; kitten", "rocket"])
# The tiny model's scores (score_scale 100) spread over ~0.05-0.41: this floor keeps
# about a third of the 20 queries per prompt.
FLOOR = 0.27


@pytest.fixture(scope="module")
def images(small_photos: list[Image.Image]) -> list[Image.Image]:
    """Three photos of three sizes (astronaut, coffee, rocket)."""
    return small_photos


def _spec(model: str, task: str = "segment", **fields) -> ModelSpec:
    return ModelSpec(backend="sam3", task=task, model=model, device="cpu", **fields)


@pytest.fixture(scope="module")
def segmenter(tiny_sam3: str, one_torch_thread) -> Sam3Backend:
    cache.clear()
    # batch_size 3: (image, prompt) chunks of 3 straddle images (4 prompts each).
    return cache.get_model(_spec(tiny_sam3, batch_size=3))


def _reference(backend: Sam3Backend, image: Image.Image, prompt: str, floor: float):
    """The model's documented use, one (image, prompt) pair at a time."""
    processor, model = backend.processor, backend.model
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    (result,) = processor.post_process_instance_segmentation(
        outputs,
        threshold=floor,
        mask_threshold=0.5,
        target_sizes=[(image.height, image.width)],
    )
    boxes = result["boxes"].numpy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image.height)
    return boxes, result["scores"].numpy(), result["masks"].bool().numpy()


def test_the_row_and_the_spec(segmenter: Sam3Backend, tiny_sam3: str) -> None:
    assert backend_class("sam3") is Sam3Backend
    assert segmenter.spec.options == Sam3Options(mask_threshold=0.5)
    flat = ModelSpec(backend="sam3", model=tiny_sam3, mask_threshold=0.4)
    assert flat.options.mask_threshold == 0.4
    assert ModelSpec(backend="sam3").model == "facebook/sam3"


def test_shared_batched_path_equals_one_reference_call_per_image_and_prompt(
    segmenter: Sam3Backend, images: list[Image.Image]
) -> None:
    predictions = segmenter.predict(images, ONTOLOGY, confidence_floor=FLOOR)
    compared = 0
    for image, detections in zip(images, predictions, strict=True):
        assert detections.mask.shape == (len(detections), image.height, image.width)
        assert detections.mask.dtype == bool
        for prompt, class_id in ONTOLOGY.prompts():
            rows = detections.data["prompt"] == prompt
            boxes, scores, masks = _reference(segmenter, image, prompt, FLOOR)
            assert rows.sum() == len(scores)
            assert (detections.class_id[rows] == class_id).all()
            assert (
                detections.data["class_name"][rows] == ONTOLOGY.class_names[class_id]
            ).all()
            np.testing.assert_allclose(detections.xyxy[rows], boxes, atol=1e-3)
            np.testing.assert_allclose(
                detections.confidence[rows], scores, rtol=1e-5, atol=1e-6
            )
            # Bilinear upsampling then > 0.5: a pixel may flip where a float ulp
            # decides; nearly all must agree.
            agree = (detections.mask[rows] == masks).mean() if len(masks) else 1.0
            assert agree > 0.999
            compared += len(scores)
    assert compared >= 20  # the comparison cannot pass empty
    assert (predictions[0].confidence >= FLOOR).all()
    assert any(d.mask.any() for d in predictions)  # real masks, not all empty


def test_prepared_ahead_in_uint8_equals_predict(
    segmenter: Sam3Backend, images: list[Image.Image]
) -> None:
    """The labeling loop prepares each call on its feeder thread: resized uint8
    batches (a quarter of float32's bytes to the device), the same labels."""
    assert isinstance(segmenter, PreparesAhead)
    prepared = segmenter.prepare(images, ONTOLOGY)
    assert {pixels.dtype for _, pixels in prepared.batches} == {torch.uint8}
    assert sum(len(batch) for batch, _ in prepared.batches) == len(images)
    staged = segmenter.predict_prepared(prepared, ONTOLOGY, confidence_floor=FLOOR)
    direct = segmenter.predict(images, ONTOLOGY, confidence_floor=FLOOR)
    assert_same_detections(staged, direct, images=len(images))


def test_one_vision_pass_per_image_and_text_embedded_once_per_ontology(
    segmenter: Sam3Backend, images: list[Image.Image]
) -> None:
    seen = {"vision_images": 0, "text_calls": 0}

    def count_vision(module, args, output) -> None:
        seen["vision_images"] += args[0].shape[0]

    def count_text(module, args, kwargs, output) -> None:
        seen["text_calls"] += 1

    ontology = Ontology.from_class_options(["dog", "car", "tree", "boat", "hat"])
    hooks = [
        segmenter.model.vision_encoder.register_forward_hook(count_vision),
        segmenter.model.text_encoder.register_forward_hook(
            count_text, with_kwargs=True
        ),
    ]
    try:
        segmenter.predict(images, ontology, confidence_floor=FLOOR)
        segmenter.predict(images[:1], ontology, confidence_floor=FLOOR)
    finally:
        for hook in hooks:
            hook.remove()
    # 5 classes, 3 + 1 images: 4 image encodings, not 20; one text encoder call.
    assert seen == {"vision_images": 4, "text_calls": 1}


def test_detect_gives_the_same_boxes_without_masks(
    segmenter: Sam3Backend, tiny_sam3: str, images: list[Image.Image]
) -> None:
    detector = cache.get_model(_spec(tiny_sam3, task="detect", batch_size=2))
    assert detector is not segmenter
    boxes = detector.predict(images[:2], ONTOLOGY, confidence_floor=FLOOR)
    masks = segmenter.predict(images[:2], ONTOLOGY, confidence_floor=FLOOR)
    for detected, segmented in zip(boxes, masks, strict=True):
        assert detected.mask is None
        assert len(detected) == len(segmented) > 0
        np.testing.assert_allclose(detected.xyxy, segmented.xyxy, atol=1e-3)
        np.testing.assert_allclose(detected.confidence, segmented.confidence, atol=1e-6)
        assert (detected.data["prompt"] == segmented.data["prompt"]).all()


def test_a_floor_above_every_score_gives_empty_detections_of_the_right_shape(
    segmenter: Sam3Backend, images: list[Image.Image]
) -> None:
    (detections,) = segmenter.predict(images[:1], ONTOLOGY, confidence_floor=0.99)
    assert len(detections) == 0
    assert detections.mask.shape == (0, images[0].height, images[0].width)
    assert detections.data["prompt"].shape == (0,)


def test_a_description_past_the_text_limit_is_refused_in_one_line(
    segmenter: Sam3Backend, images: list[Image.Image]
) -> None:
    long = " ".join(["striped"] * 40)
    with pytest.raises(PromptTooLongError, match="at most 32") as error:
        segmenter.predict(
            images[:1],
            Ontology.from_class_options([f"cat: {long}"]),
            confidence_floor=0,
        )
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content", ["empty", "garbage config"])
def test_an_unloadable_folder_is_one_line_model_load_error(
    tmp_path: Path, content: str
) -> None:
    if content != "empty":
        (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as error:
        Sam3Backend.load(_spec(str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message and "SAM 3" in message


def test_a_missing_folder_is_one_line_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such model directory"):
        cache.get_model(_spec(str(tmp_path / "nope")))
