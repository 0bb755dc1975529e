"""Grounded SAM on tiny random weights (Grounding DINO + SAM checkpoints saved like real
ones, loaded through the real paths), against segment_anything's own SamPredictor."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

from model_loaders import cache, grounded_sam
from model_loaders.backends import backend_class, backend_for_task
from model_loaders.grounded_sam import GroundedSamModel, load_sam
from model_loaders.grounding_dino import GroundingDinoModel
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelLoadError, ModelSpec

ONTOLOGY = Ontology.from_class_options(["person", "cat", "rocket"])
FLOOR = 0.3  # a few dozen boxes per image from the tiny random Grounding DINO


@pytest.fixture(scope="module")
def three_photos(photos: list[Image.Image]) -> list[Image.Image]:
    """astronaut, coffee and chelsea: with batch_size 2, one batch of 2 and one of 1."""
    return photos[:3]


def _spec(dino: str, sam: str, **fields) -> ModelSpec:
    return ModelSpec(
        task="segment",
        model=dino,
        sam_checkpoint=sam,
        sam_model_type="vit_tiny",
        device="cpu",
        **fields,
    )


@pytest.fixture(scope="module")
def backend(tiny_grounding_dino: str, tiny_sam: str) -> GroundedSamModel:
    cache.clear()
    return cache.get_model(_spec(tiny_grounding_dino, tiny_sam, batch_size=2))


def test_segment_spec_picks_grounded_sam_and_its_box_model_comes_from_the_cache(
    backend: GroundedSamModel, tiny_grounding_dino: str
) -> None:
    assert backend_for_task("segment") == backend.spec.backend == "grounded_sam"
    assert backend_class("grounded_sam") is GroundedSamModel
    dino = cache.get_model(
        ModelSpec(model=tiny_grounding_dino, device="cpu", batch_size=2)
    )
    assert backend.boxes is dino  # Grounding DINO is shared, not loaded twice


def test_one_decoder_call_for_all_boxes_equals_one_predictor_call_per_box(
    backend: GroundedSamModel, three_photos: list[Image.Image]
) -> None:
    image = three_photos[0]
    (detections,) = backend.boxes.predict([image], ONTOLOGY, confidence_floor=FLOOR)
    assert len(detections) >= 5
    embedding, (input_size,) = backend.embed([image])

    batched = backend.decode(
        embedding,
        detections.xyxy,
        input_size=input_size,
        original_size=(image.height, image.width),
    )

    predictor = SamPredictor(backend.sam)
    predictor.set_image(np.asarray(image))
    threshold = backend.sam.mask_threshold
    for box, mask in zip(detections.xyxy, batched, strict=True):
        (logits,), _, _ = predictor.predict(
            box=box, multimask_output=False, return_logits=True
        )
        # Equal masks, except where a pixel's logit is within float rounding of the
        # threshold: one decoder call for all boxes multiplies matrices of another
        # shape, which the CPU's BLAS may round differently (seen on AMD EPYC).
        clear = np.abs(logits - threshold) > 1e-4
        assert clear.mean() > 0.9  # the comparison covers most pixels
        np.testing.assert_array_equal(mask[clear], (logits > threshold)[clear])
    assert batched.any(axis=(1, 2)).sum() >= 1  # real masks, not all empty


def test_predict_runs_the_decoder_once_per_image_never_per_box(
    backend: GroundedSamModel, three_photos: list[Image.Image], monkeypatch
) -> None:
    decoder_calls, encoder_images = [], []
    decoder, encoder = backend.sam.mask_decoder, backend.sam.image_encoder
    handles = [
        decoder.register_forward_hook(
            lambda m, args, kwargs, out: decoder_calls.append(
                kwargs["sparse_prompt_embeddings"].shape[0]
            ),
            with_kwargs=True,
        ),
        encoder.register_forward_hook(
            lambda m, args, out: encoder_images.append(args[0].shape[0])
        ),
    ]
    try:
        results = backend.predict(three_photos, ONTOLOGY, confidence_floor=FLOOR)
    finally:
        for handle in handles:
            handle.remove()

    boxes = [len(d) for d in results]
    assert decoder_calls == boxes  # one call per image, holding all its boxes
    assert encoder_images == [2, 1]  # batch_size 2: each image embedded once


def test_masks_are_one_per_detection_and_the_boxes_are_grounding_dinos(
    backend: GroundedSamModel, three_photos: list[Image.Image]
) -> None:
    results = backend.predict(three_photos, ONTOLOGY, confidence_floor=FLOOR)
    boxes_only = backend.boxes.predict(three_photos, ONTOLOGY, confidence_floor=FLOOR)

    for image, ours, plain in zip(three_photos, results, boxes_only, strict=True):
        assert ours.mask.shape == (len(ours), image.height, image.width)
        assert ours.mask.dtype == bool
        np.testing.assert_array_equal(ours.xyxy, plain.xyxy)
        np.testing.assert_array_equal(ours.confidence, plain.confidence)
        assert ours.data["class_name"].tolist() == plain.data["class_name"].tolist()


def test_labels_do_not_depend_on_batch_mates(
    tiny_grounding_dino: str, tiny_sam: str, backend, three_photos: list[Image.Image]
) -> None:
    """A batch of 3 embeddings and 3 single ones: the same masks (up to a few border
    pixels where a logit sits at the threshold and float sums differ)."""
    together = backend.predict(three_photos, ONTOLOGY, confidence_floor=FLOOR)
    single = GroundedSamModel(
        backend.boxes,
        backend.sam,
        backend.spec.model_copy(update={"batch_size": 1}),
        backend.device,
    )
    alone = single.predict(three_photos, ONTOLOGY, confidence_floor=FLOOR)

    for a, b in zip(together, alone, strict=True):
        assert (a.mask != b.mask).mean() < 1e-4


def test_images_without_boxes_skip_sam(backend, three_photos, monkeypatch) -> None:
    def no_embedding(images):
        raise AssertionError("SAM ran for an image without boxes")

    monkeypatch.setattr(backend, "embed", no_embedding)

    results = backend.predict(three_photos[:2], ONTOLOGY, confidence_floor=1.01)

    assert [d.mask.shape for d in results] == [(0, 512, 512), (0, 400, 600)]


def test_a_missing_checkpoint_is_one_clear_line(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no such file") as error:
        load_sam("vit_b", str(tmp_path / "missing.pth"))
    assert "\n" not in str(error.value)


def test_offline_without_the_official_weights_says_what_to_do(tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(grounded_sam.socket, "getaddrinfo", unreachable)

    with pytest.raises(ModelLoadError) as error:
        load_sam("vit_b", None)

    message = str(error.value)
    assert "\n" not in message
    assert grounded_sam.SAM_CHECKPOINT_URLS["vit_b"] in message
    assert "offline" in message and "--sam-checkpoint PATH" in message


def test_an_official_checkpoint_already_in_the_torch_cache_is_used(
    tiny_sam: str, tmp_path, monkeypatch
) -> None:
    """Offline, a URL whose file is in torch's hub cache loads without the network."""
    url = "https://example.invalid/weights/sam_tiny_test.pth"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "sam_tiny_test.pth").write_bytes(
        Path(tiny_sam).read_bytes()
    )
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(socket, "getaddrinfo", None)  # any network use would fail

    sam = load_sam("vit_tiny", url)

    assert sam.image_encoder.img_size == 256


def test_a_checkpoint_of_another_type_is_refused_clearly(tiny_sam: str) -> None:
    with pytest.raises(ModelLoadError, match="does not fit --sam-model-type vit_mid"):
        load_sam("vit_mid", tiny_sam)


def test_a_file_that_is_not_a_state_dict_is_refused_clearly(tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot read SAM checkpoint") as error:
        load_sam("vit_tiny", str(bad))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"task": "segment"}, "grounded_sam"),
        ({"task": "detect"}, "grounding_dino"),
        ({"task": "classify"}, "clip"),
        ({"task": "classify-multi"}, "clip"),
        ({"task": "segment", "backend": "grounding_dino"}, ValueError),
        ({"task": "detect", "backend": "clip"}, ValueError),
    ],
)
def test_spec_backend_follows_the_task(fields: dict, expected) -> None:
    if isinstance(expected, str):
        assert ModelSpec(**fields).backend == expected
    else:
        with pytest.raises(expected, match="cannot do task"):
            ModelSpec(**fields)


def test_grounding_dino_specs_are_unchanged_by_the_new_fields() -> None:
    spec = ModelSpec(model="/m", device="cpu")
    assert (spec.backend, spec.task, spec.model) == ("grounding_dino", "detect", "/m")
    assert ModelSpec.model_validate(spec.model_dump()) == spec
    assert hash(ModelSpec.model_validate(spec.model_dump())) == hash(spec)
    assert GroundingDinoModel is backend_class("grounding_dino")
