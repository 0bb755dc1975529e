"""The CLIP backend on a tiny random open_clip model saved as a ``local-dir:`` folder,
against open_clip itself: single-label (top-1 of a softmax), multi-label (each class on
its own), batching, and the text tower running once per run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from model_loaders import cache, clip
from model_loaders.batching import PreparesAhead
from model_loaders.clip import ClipModel
from model_loaders.ontology import Ontology
from model_loaders.protocol import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    ModelLoadError,
    ModelSpec,
)
from tasks.thresholds import Thresholds, apply_thresholds
from tests.detections import assert_same_detections

ONTOLOGY = Ontology.from_class_options(
    ["cat: a cat; kitten", "rocket", "person: astronaut"]
)
NAMES = ONTOLOGY.class_names


def _backend(model: str, task: str = "classify", **fields) -> ClipModel:
    return ClipModel.load(ModelSpec(task=task, model=model, device="cpu", **fields))


def _reference_logits(
    model_dir: str, images: list[Image.Image], template: str = "a photo of a {}"
) -> torch.Tensor:
    """open_clip on its own, one image at a time: (images, descriptions + negative)."""
    model, preprocess = open_clip.create_model_from_pretrained(model_dir)
    tokenizer = open_clip.get_tokenizer(model_dir)
    texts = [template.format(d) for d, _ in ONTOLOGY.prompts()]
    texts.append(template.format("something else"))
    with torch.no_grad():
        text = model.encode_text(tokenizer(texts), normalize=True)
        rows = []
        for image in images:
            features = model.encode_image(preprocess(image)[None], normalize=True)
            rows.append(model.logit_scale.exp() * features @ text.T)
    return torch.cat(rows)


def test_single_label_is_the_top_class_of_a_softmax_over_all_prompts(
    tiny_clip: str, photos: list[Image.Image]
) -> None:
    """A class's probability sums its descriptions'; only the top-1 class comes back."""
    backend = _backend(tiny_clip, batch_size=4)
    class_of = [c for _, c in ONTOLOGY.prompts()]

    results = backend.predict(photos, ONTOLOGY, confidence_floor=0.0)

    probs = _reference_logits(tiny_clip, photos)[:, :-1].softmax(-1).numpy()
    for image, detections, row in zip(photos, results, probs, strict=True):
        per_class = np.bincount(class_of, weights=row, minlength=len(NAMES))
        assert len(detections) == 1
        assert detections.class_id[0] == per_class.argmax()
        assert detections.confidence[0] == pytest.approx(per_class.max(), abs=1e-5)
        assert detections.data["class_name"][0] == NAMES[per_class.argmax()]
        assert (
            detections.data["prompt"][0]
            in ONTOLOGY.classes[per_class.argmax()].descriptions
        )
        np.testing.assert_array_equal(
            detections.xyxy, [[0, 0, image.width, image.height]]
        )


def test_multi_label_scores_each_class_on_its_own(tiny_clip, photos) -> None:
    """Two-way softmax of each description against the negative prompt; a class takes
    its best description."""
    backend = _backend(tiny_clip, task="classify-multi")
    class_of = np.array([c for _, c in ONTOLOGY.prompts()])

    results = backend.predict(photos, ONTOLOGY, confidence_floor=0.0)

    logits = _reference_logits(tiny_clip, photos)
    scores = (logits[:, :-1] - logits[:, -1:]).sigmoid().numpy()
    for detections, row in zip(results, scores, strict=True):
        expected = [row[class_of == c].max() for c in range(len(NAMES))]
        assert detections.class_id.tolist() == [0, 1, 2]
        np.testing.assert_allclose(detections.confidence, expected, atol=1e-5)


def test_adding_a_class_leaves_the_other_classes_scores_alone(tiny_clip, photos):
    backend = _backend(tiny_clip, task="classify-multi")
    more = Ontology.from_class_options(
        [*(f"{c.name}: {'; '.join(c.descriptions)}" for c in ONTOLOGY.classes), "dog"]
    )

    before = backend.predict(photos[:2], ONTOLOGY, confidence_floor=0.0)
    after = backend.predict(photos[:2], more, confidence_floor=0.0)

    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(b.confidence[:3], a.confidence, atol=1e-6)


@pytest.mark.parametrize("task", ["classify", "classify-multi"])
def test_batched_equals_one_image_at_a_time(tiny_clip, photos, task: str) -> None:
    batched = _backend(tiny_clip, task=task, batch_size=3).predict(
        photos, ONTOLOGY, confidence_floor=0.0
    )
    backend = _backend(tiny_clip, task=task, batch_size=1)
    alone = [backend.predict([p], ONTOLOGY, confidence_floor=0.0)[0] for p in photos]

    for a, b in zip(batched, alone, strict=True):
        assert a.class_id.tolist() == b.class_id.tolist()
        assert a.data["prompt"].tolist() == b.data["prompt"].tolist()
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)


def test_prepared_ahead_equals_predict(tiny_clip, photos) -> None:
    """The labeling loop preprocesses each call on its feeder thread, in batches."""
    backend = _backend(tiny_clip, task="classify-multi", batch_size=3)
    assert isinstance(backend, PreparesAhead)
    prepared = backend.prepare(photos, ONTOLOGY)
    assert [len(pixels) for pixels in prepared.batches] == [3, len(photos) - 3]
    assert prepared.sizes == [photo.size for photo in photos]
    staged = backend.predict_prepared(prepared, ONTOLOGY, confidence_floor=0.0)
    direct = backend.predict(photos, ONTOLOGY, confidence_floor=0.0)
    assert_same_detections(staged, direct, images=len(photos))
    for photo, detections in zip(photos, staged, strict=True):  # the whole image
        assert detections.xyxy.tolist()[0] == [0, 0, photo.width, photo.height]


@pytest.mark.parametrize(
    ("passes", "expected"),
    [
        ((False, False, False), []),
        ((False, True, False), ["rocket"]),
        ((True, False, True), ["cat", "person"]),
        ((True, True, True), ["cat", "rocket", "person"]),
    ],
    ids=["zero", "one", "two", "all"],
)
def test_multi_label_thresholds_decide_each_class(
    tiny_clip, photos, passes: tuple[bool, ...], expected: list[str]
) -> None:
    backend = _backend(tiny_clip, task="classify-multi")
    (detections,) = backend.predict(photos[:1], ONTOLOGY, confidence_floor=0.0)
    scores = dict(
        zip(detections.data["class_name"], detections.confidence, strict=True)
    )
    per_class = {
        name: float(scores[name]) + (-1e-3 if keep else 1e-3)
        for name, keep in zip(NAMES, passes, strict=True)
    }

    kept = apply_thresholds(detections, Thresholds(per_class=per_class), NAMES)

    assert kept.data["class_name"].tolist() == expected


def test_single_label_below_its_threshold_is_unlabeled_never_the_second_class(
    tiny_clip, photos
) -> None:
    backend = _backend(tiny_clip)
    (detections,) = backend.predict(photos[:1], ONTOLOGY, confidence_floor=0.0)
    top = detections.data["class_name"][0]
    thresholds = Thresholds(
        default=0.0, per_class={top: float(detections.confidence[0]) + 1e-3}
    )

    kept = apply_thresholds(detections, thresholds, NAMES)

    assert len(kept) == 0


def test_the_floor_drops_candidates_in_the_backend(tiny_clip, photos) -> None:
    backend = _backend(tiny_clip, task="classify-multi")
    (everything,) = backend.predict(photos[:1], ONTOLOGY, confidence_floor=0.0)
    floor = float(np.sort(everything.confidence)[1])

    (above,) = backend.predict(photos[:1], ONTOLOGY, confidence_floor=floor)

    assert sorted(above.confidence.tolist()) == sorted(
        c for c in everything.confidence.tolist() if c >= floor
    )


def test_the_text_tower_runs_once_per_run(
    tiny_clip: str, sample_photos: Path, tmp_path: Path
) -> None:
    """Two chunks through the labeling task: prompts encoded once, images batched."""
    from tasks.label import label_chunk, plan_chunks
    from tasks.settings import LabelSettings

    settings = LabelSettings(
        ontology=ONTOLOGY,
        model=ModelSpec(
            task="classify-multi", model=tiny_clip, device="cpu", batch_size=4
        ),
        thresholds=Thresholds(default=0.0),
        nms="none",
        chunk_size=2,
    )
    cache.clear()
    backend = cache.get_model(settings.model)
    text_calls, image_batches = [], []
    encode_text, encode_image = backend.model.encode_text, backend.model.encode_image
    backend.model.encode_text = lambda *a, **k: (
        text_calls.append(1) or encode_text(*a, **k)
    )
    backend.model.encode_image = lambda x, **k: (
        image_batches.append(len(x)) or encode_image(x, **k)
    )
    try:
        chunks = plan_chunks(str(sample_photos), settings)
        results = [
            label_chunk(c, settings, str(tmp_path / "out"), "run") for c in chunks
        ]
        backend.predict(
            [Image.new("RGB", (20, 20))], ONTOLOGY, confidence_floor=0.0
        )  # a later call in the same process reuses them too
    finally:
        cache.clear()

    assert len(chunks) == 2 and sum(r.labels for r in results) == 4 * 3
    assert text_calls == [1]
    assert image_batches == [2, 2, 1]


def test_sigmoid_models_use_their_own_bias(tiny_clip, photos) -> None:
    """A SigLIP-style model (``logit_bias``) scores prompts by its own sigmoid."""
    backend = _backend(tiny_clip, task="classify-multi")
    backend.model.logit_bias = torch.nn.Parameter(torch.tensor([-5.0]))
    class_of = np.array([c for _, c in ONTOLOGY.prompts()])

    (detections,) = backend.predict(photos[:1], ONTOLOGY, confidence_floor=0.0)

    logits = _reference_logits(tiny_clip, photos[:1])[0, :-1] - 5.0
    row = logits.sigmoid().numpy()
    expected = [row[class_of == c].max() for c in range(len(NAMES))]
    np.testing.assert_allclose(detections.confidence, expected, atol=1e-5)


def test_the_prompt_template_is_applied_to_every_description(tiny_clip, photos) -> None:
    template = "a blurry picture of the {}, maybe"
    backend = _backend(tiny_clip, prompt_template=template)
    class_of = [c for _, c in ONTOLOGY.prompts()]

    (detections,) = backend.predict(photos[:1], ONTOLOGY, confidence_floor=0.0)

    probs = _reference_logits(tiny_clip, photos[:1], template)[0, :-1].softmax(-1)
    per_class = np.bincount(class_of, weights=probs.numpy(), minlength=len(NAMES))
    assert detections.confidence[0] == pytest.approx(per_class.max(), abs=1e-5)


@pytest.mark.parametrize("template", ["a photo", "{} and {}", "a photo of {0}"])
def test_a_template_without_exactly_one_placeholder_is_refused(template: str) -> None:
    with pytest.raises(ValueError, match="exactly once"):
        ModelSpec(task="classify", prompt_template=template)


def test_a_classify_spec_defaults_to_vit_b_32_laion() -> None:
    spec = ModelSpec(task="classify-multi")
    assert (spec.backend, spec.model, spec.options.pretrained) == (
        "clip",
        DEFAULT_CLIP_MODEL,
        DEFAULT_CLIP_PRETRAINED,
    )


def _folder_without(tmp_path: Path, tiny_clip: str, name: str) -> str:
    source = Path(tiny_clip.removeprefix("local-dir:"))
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in source.iterdir():
        if file.name != name:
            (copy / file.name).write_bytes(file.read_bytes())
    return f"local-dir:{copy}"


@pytest.mark.parametrize(
    ("model", "pretrained", "message"),
    [
        ("local-dir:/no/such/folder", None, "no such folder"),
        ("no-config", None, "no open_clip_config.json"),
        ("no-weights", None, "no weights"),
        ("RN50", None, "needs --pretrained"),
        ("ViT-B-32", None, "offline"),  # the default laion2b_s34b_b79k weights
        ("ViT-B-32", "no_such_tag", "neither a file nor a known tag"),
        ("ViT-Nonsense-7", "x", "unknown CLIP model"),
        ("ViT-B-32", "laion2b_s34b_b79k", "offline"),
        ("hf-hub:someone/some-clip", None, "offline"),
    ],
)
def test_models_that_cannot_load_fail_fast_in_one_line(
    model: str, pretrained: str | None, message: str, tiny_clip, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(clip, "_hub_reachable", lambda: False)
    if model == "no-config":
        model = _folder_without(tmp_path, tiny_clip, "open_clip_config.json")
    elif model == "no-weights":
        model = _folder_without(tmp_path, tiny_clip, "open_clip_model.safetensors")

    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=message) as error:
        _backend(model, pretrained=pretrained)

    assert "\n" not in str(error.value)
    assert time.monotonic() - started < 5  # no download retries
