"""OWLv2 on tiny random weights (saved with save_pretrained, loaded through the real
``ModelSpec`` -> ``cache.get_model`` path), against the model's reference use: one
``Owlv2Processor(images=..., text=...)`` -> ``Owlv2ForObjectDetection`` ->
``post_process_grounded_object_detection`` call per (image, description)."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv
import torch
from PIL import Image

from model_loaders import cache
from model_loaders.grounding_dino_prompts import PromptTooLongError
from model_loaders.ontology import Ontology
from model_loaders.owlv2 import Owlv2Backend
from model_loaders.protocol import ModelLoadError, ModelSpec

# Three classes, one with two descriptions: four queries per image.
ONTOLOGY = Ontology.from_class_options(
    ["person", "cat: cat; a photo of a kitten", "rocket"]
)
FLOOR = 0.5


@pytest.fixture(scope="module")
def owl(tiny_owlv2: str, one_torch_thread) -> Owlv2Backend:
    cache.clear()
    # No backend given: the folder's config.json (model_type owlv2) picks it.
    spec = ModelSpec(model=tiny_owlv2, device="cpu", batch_size=2)
    assert spec.backend == "owlv2"
    return cache.get_model(spec)


def _reference(owl: Owlv2Backend, image: Image.Image, prompt: str) -> dict:
    """The documented use, one (image, description) pair; every box (threshold 0)."""
    inputs = owl.processor(images=image, text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        outputs = owl.model(**inputs)
    (result,) = owl.processor.post_process_grounded_object_detection(
        outputs, threshold=0.0, target_sizes=[(image.height, image.width)]
    )
    return result


def test_all_queries_at_once_equal_one_reference_call_per_image_and_description(
    owl: Owlv2Backend, photos: list[Image.Image]
) -> None:
    """A box's class is its best description's: the max over the per-description
    reference scores of that box; the box itself is the reference's."""
    images = photos + photos[:1]  # 5 images, batches of 2 straddle sizes
    predictions = owl.predict(images, ONTOLOGY, confidence_floor=FLOOR)
    prompts = ONTOLOGY.prompts()
    compared = 0
    for image, ours in zip(images, predictions, strict=True):
        references = [_reference(owl, image, prompt) for prompt, _ in prompts]
        scores = torch.stack([r["scores"] for r in references])  # (prompts, boxes)
        best_score, best_prompt = scores.max(dim=0)
        keep = (best_score >= FLOOR).numpy()
        boxes = sv.clip_boxes(references[0]["boxes"].numpy(), image.size)[keep]
        assert len(ours) == int(keep.sum())
        np.testing.assert_allclose(ours.xyxy, boxes, atol=1e-3)
        np.testing.assert_allclose(
            ours.confidence, best_score.numpy()[keep], rtol=1e-5, atol=1e-6
        )
        chosen = best_prompt.numpy()[keep]
        assert ours.data["prompt"].tolist() == [prompts[i][0] for i in chosen]
        assert ours.class_id.tolist() == [prompts[i][1] for i in chosen]
        assert ours.data["class_name"].tolist() == [
            ONTOLOGY.class_names[prompts[i][1]] for i in chosen
        ]
        compared += len(ours)
    assert compared >= 20  # the comparison cannot pass empty
    fired = {p for d in predictions for p in d.data["prompt"]}
    assert len(fired) >= 2  # the best description differs between boxes


def test_one_vision_pass_per_image_and_text_embedded_once_per_ontology(
    owl: Owlv2Backend, photos: list[Image.Image]
) -> None:
    seen = {"vision_images": 0, "text_calls": 0}

    def count_vision(module, args, kwargs, output) -> None:
        seen["vision_images"] += kwargs["pixel_values"].shape[0]

    def count_text(module, args, kwargs, output) -> None:
        seen["text_calls"] += 1

    ontology = Ontology.from_class_options(["dog", "car", "tree", "boat", "hat"])
    hooks = [
        owl.model.owlv2.vision_model.register_forward_hook(
            count_vision, with_kwargs=True
        ),
        owl.model.owlv2.text_model.register_forward_hook(count_text, with_kwargs=True),
    ]
    try:
        owl.predict(photos[:3], ontology, confidence_floor=FLOOR)
        owl.predict(photos[:1], ontology, confidence_floor=FLOOR)
    finally:
        for hook in hooks:
            hook.remove()
    # 5 classes, 3 + 1 images: 4 image encodings, not 20; one text encoder call.
    assert seen == {"vision_images": 4, "text_calls": 1}


def test_a_floor_above_every_score_gives_empty_detections(
    owl: Owlv2Backend, photos: list[Image.Image]
) -> None:
    (detections,) = owl.predict(photos[:1], ONTOLOGY, confidence_floor=0.999)
    assert len(detections) == 0
    assert detections.xyxy.shape == (0, 4)
    assert detections.data["prompt"].shape == (0,)


def test_a_description_past_the_text_limit_is_refused_in_one_line_before_loading(
    tiny_owlv2: str,
) -> None:
    long = Ontology.from_class_options([f"cat: {' '.join(['striped'] * 20)}"])
    spec = ModelSpec(model=tiny_owlv2, device="cpu")
    with pytest.raises(PromptTooLongError, match="at most 16") as error:
        Owlv2Backend.check_ontology(spec, long)
    assert "\n" not in str(error.value)
    Owlv2Backend.check_ontology(spec, ONTOLOGY)  # short ones pass


def test_an_unloadable_folder_is_one_line_model_load_error(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "owlv2"}')
    spec = ModelSpec(model=str(tmp_path), device="cpu")
    assert spec.backend == "owlv2"
    for attempt in (
        lambda: Owlv2Backend.check_ontology(spec, ONTOLOGY),
        lambda: Owlv2Backend.load(spec),
    ):
        with pytest.raises(ModelLoadError, match="cannot load OWLv2") as error:
            attempt()
        assert "\n" not in str(error.value)
