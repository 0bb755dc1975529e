"""The Grounding DINO backend against transformers' own single-image reference, on the
same (tiny, random) weights loaded through the real ``--model PATH`` code path."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import supervision as sv
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    GroundingDinoForObjectDetection,
    MMGroundingDinoForObjectDetection,
    pipeline,
)

from model_loaders import cache
from model_loaders.grounding_dino import GroundingDinoModel, MMGroundingDinoModel
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelLoadError, ModelSpec

ONTOLOGY = Ontology.from_class_options(["person", "cat: a cat", "rocket"])
WORD_CLASS = {"person": 0, "a": 1, "cat": 1, "rocket": 2}


# Grounding DINO, and MM Grounding DINO through the same code: (folder fixture,
# backend the folder must pick, transformers class of the reference).
VARIANTS = {
    "grounding-dino": (
        "tiny_grounding_dino",
        GroundingDinoModel,
        GroundingDinoForObjectDetection,
    ),
    "mm-grounding-dino": (
        "tiny_mm_grounding_dino",
        MMGroundingDinoModel,
        MMGroundingDinoForObjectDetection,
    ),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    """(folder, backend class, processor, reference model) of each variant."""
    fixture, backend_class, model_class = VARIANTS[request.param]
    folder = request.getfixturevalue(fixture)
    processor = AutoProcessor.from_pretrained(folder)
    model = model_class.from_pretrained(folder).eval()
    return folder, backend_class, processor, model


def _backend(path: str, **spec) -> GroundingDinoModel:
    return GroundingDinoModel.load(ModelSpec(model=path, device="cpu", **spec))


def test_batched_labels_equal_the_single_image_reference(variant, photos):
    """Same boxes, scores and classes as processor + model + post-processing on one
    image, for Grounding DINO and MM Grounding DINO (whose folder picks its backend:
    no backend is given).

    The reference score of a query is the max over ALL tokens ([CLS], '.', [SEP]
    included); ours is the max over the tokens of one class's descriptions. They are
    equal exactly when the reference's best token is a class token, and only then is the
    reference's class defined: those queries must match in score and class; every query
    must match in box.
    """
    folder, backend_class, processor, model = variant
    backend = cache.get_model(ModelSpec(model=folder, device="cpu", batch_size=3))
    assert type(backend) is backend_class
    images = photos + photos[:2]  # repeated shapes, so some batches hold several images
    batched = backend.predict(images, ONTOLOGY, confidence_floor=0.0)

    (text,) = backend.texts_for(ONTOLOGY)
    compared = 0
    for image, ours in zip(images, batched, strict=True):
        inputs = processor(images=[image], text=[text.text], return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        (result,) = processor.post_process_grounded_object_detection(
            outputs,
            input_ids=inputs["input_ids"],
            threshold=0.0,
            text_threshold=0.0,
            target_sizes=[(image.height, image.width)],
        )
        assert len(ours) == len(result["boxes"]) == model.config.num_queries
        # We clip boxes to the image; the reference leaves them reaching past the
        # border.
        reference_xyxy = sv.clip_boxes(result["boxes"].numpy(), image.size)
        np.testing.assert_allclose(ours.xyxy, reference_xyxy, atol=1e-3)
        tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
        best = outputs.logits[0, :, : len(tokens)].argmax(-1)
        for query, token_index in enumerate(best.tolist()):
            if tokens[token_index] in WORD_CLASS:
                compared += 1
                assert ours.class_id[query] == WORD_CLASS[tokens[token_index]]
                assert ours.confidence[query] == pytest.approx(
                    result["scores"][query].item(), abs=1e-5
                )
            else:  # best token is [CLS]/'.'/[SEP]: our class score can only be lower
                assert ours.confidence[query] <= result["scores"][query].item() + 1e-6
        assert set(ours.data["class_name"]) <= set(ONTOLOGY.class_names)
    assert compared > 20  # the comparison really covered many queries


def test_labels_do_not_depend_on_batch_mates(tiny_grounding_dino, photos):
    backend = _backend(tiny_grounding_dino, batch_size=8)
    together = backend.predict(photos + photos, ONTOLOGY, confidence_floor=0.2)
    alone = [backend.predict([p], ONTOLOGY, confidence_floor=0.2)[0] for p in photos]
    for ours, single in zip(together, alone + alone, strict=True):
        np.testing.assert_allclose(ours.xyxy, single.xyxy, atol=1e-3)
        np.testing.assert_allclose(ours.confidence, single.confidence, atol=1e-5)
        assert ours.class_id.tolist() == single.class_id.tolist()
        assert ours.data["prompt"].tolist() == single.data["prompt"].tolist()


def test_per_class_mode_agrees_with_the_transformers_pipeline(
    tiny_grounding_dino, photos
):
    """One prompt per label, as `zero-shot-object-detection` does (bare label as text).

    The pipeline scores a box by its max over all tokens, special ones included; we
    score by the label's own tokens. So boxes must agree exactly (the pipeline truncates
    them to integers), and among boxes whose two scores agree the rank order must too.
    """
    backend = _backend(tiny_grounding_dino, prompt_mode="per-class", batch_size=4)
    reference = pipeline("zero-shot-object-detection", model=tiny_grounding_dino)
    labels = ["person", "rocket"]
    ontology = Ontology.from_class_options(labels)
    image = photos[3]
    (ours,) = backend.predict([image], ontology, confidence_floor=0.0)
    theirs = reference(image, candidate_labels=labels, threshold=0.0)
    for class_id, label in enumerate(labels):
        mine = ours[ours.class_id == class_id]
        boxes = [r for r in theirs if r["label"] == label]
        assert len(mine) == len(boxes)
        their_boxes = sorted(_clipped(r["box"], image) for r in boxes)
        my_boxes = sorted(tuple(int(v) for v in box) for box in mine.xyxy)
        assert np.abs(np.array(my_boxes) - np.array(their_boxes)).max() <= 1
        # Rank order among boxes scored identically by both.
        their_score = {_clipped(r["box"], image): r["score"] for r in boxes}
        same = [
            (float(score), their_score[key])
            for box, score in zip(mine.xyxy, mine.confidence, strict=True)
            if (key := tuple(int(v) for v in box)) in their_score
            and abs(their_score[key] - float(score)) < 1e-6
        ]
        assert len(same) >= 3
        assert [s for s, _ in sorted(same)] == [
            s for s, _ in sorted(same, key=lambda x: x[1])
        ]


def _clipped(box: dict[str, int], image: Image.Image) -> tuple[int, ...]:
    """The pipeline's integer box, clipped to the image as our labels are."""
    clipped = sv.clip_boxes(np.array([list(box.values())], dtype=float), image.size)
    return tuple(int(v) for v in clipped[0])


def test_a_class_list_over_the_token_limit_is_chunked_and_merged(
    tiny_grounding_dino, photos
):
    """The tiny model reads 64 tokens: 30 classes need several passes. Each class's
    detections must equal those of running that class's chunk on its own."""
    names = [f"thing{chr(97 + i // 26)}{chr(97 + i % 26)} object" for i in range(30)]
    ontology = Ontology.from_class_options(names)
    backend = _backend(tiny_grounding_dino, batch_size=4)
    texts = backend.texts_for(ontology)
    assert len(texts) >= 3
    (merged,) = backend.predict(photos[:1], ontology, confidence_floor=0.5)
    assert len(merged) > 0
    assert set(merged.class_id.tolist()) <= set(range(30))
    for text in texts:
        chunk_names = [names[p.class_id] for p in text.phrases]
        (alone,) = backend.predict(
            photos[:1], Ontology.from_class_options(chunk_names), confidence_floor=0.5
        )
        in_chunk = np.isin(merged.data["class_name"], chunk_names)
        np.testing.assert_allclose(merged.xyxy[in_chunk], alone.xyxy, atol=1e-3)
        assert (
            merged.data["class_name"][in_chunk].tolist()
            == alone.data["class_name"].tolist()
        )


def test_several_descriptions_map_to_one_class_and_record_the_prompt(
    tiny_grounding_dino, photos
):
    ontology = Ontology.from_class_options(
        ["can: a shiny metal drink can; soda can", "cat"]
    )
    (detections,) = _backend(tiny_grounding_dino).predict(
        photos[:1], ontology, confidence_floor=0.0
    )
    for class_id, prompt in zip(
        detections.class_id, detections.data["prompt"], strict=True
    ):
        assert prompt in ontology.classes[class_id].descriptions
    assert set(detections.data["prompt"]) - {"cat"}  # the can's descriptions do fire


def test_bfloat16_runs_and_finds_mostly_the_float32_boxes(tiny_grounding_dino, photos):
    """bf16 (the GPU default) rounds enough to change which of the two-stage proposals
    win, so the query order differs; most boxes must still be found within 2 px."""
    fp32 = _backend(tiny_grounding_dino, dtype="float32")
    bf16 = _backend(tiny_grounding_dino, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    (a,) = fp32.predict(photos[:1], ONTOLOGY, confidence_floor=0.0)
    (b,) = bf16.predict(photos[:1], ONTOLOGY, confidence_floor=0.0)
    assert len(a) == len(b)
    assert (
        np.isfinite(b.xyxy).all() and ((b.confidence >= 0) & (b.confidence <= 1)).all()
    )
    distance = np.abs(a.xyxy[:, None, :] - b.xyxy[None, :, :]).max(axis=2)
    assert (distance.min(axis=1) <= 2.0).mean() >= 0.5


def test_model_cache_loads_once_under_a_thread_pool(tiny_grounding_dino, monkeypatch):
    cache.clear()
    loads = []
    real_load = GroundingDinoModel.load.__func__
    barrier = threading.Barrier(4)

    def counting_load(cls, spec):
        loads.append(spec)
        return real_load(cls, spec)

    monkeypatch.setattr(GroundingDinoModel, "load", classmethod(counting_load))
    spec = ModelSpec(model=tiny_grounding_dino, device="cpu")

    def get():
        barrier.wait()
        return cache.get_model(spec)

    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: get(), range(4)))
    assert len(loads) == 1
    assert all(m is models[0] for m in models)
    cache.clear()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("/no/such/folder", "no such model directory"),
        ("./relative/missing", "no such model directory"),
        ("IDEA-Research/grounding-dino-tiny", "not in the local Hugging Face cache"),
    ],
)
def test_a_missing_model_fails_fast_with_one_clear_line(model, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=message) as error:
        GroundingDinoModel.load(ModelSpec(model=model, device="cpu"))
    assert "\n" not in str(error.value)


def test_a_folder_without_a_model_is_refused_clearly(tmp_path):
    spec = ModelSpec(backend="grounding_dino", model=str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="cannot load Grounding DINO") as error:
        GroundingDinoModel.load(spec)
    assert "\n" not in str(error.value)


def test_an_image_without_detections_still_has_its_columns(variant, photos):
    """A floor above every score: empty, but with the class_name/prompt columns the
    label table reads (merging empty parts used to drop them)."""
    folder = variant[0]
    backend = cache.get_model(ModelSpec(model=folder, device="cpu"))
    (detections,) = backend.predict(photos[:1], ONTOLOGY, confidence_floor=1.5)
    assert len(detections) == 0
    assert detections.data["class_name"].shape == (0,)
    assert detections.data["prompt"].shape == (0,)
