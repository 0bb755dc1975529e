"""The host side runs ahead of the model (``run_ahead``, ``PreparesAhead``) without
changing a pixel or a label, and without leaving threads behind when something fails."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from model_loaders import cache
from model_loaders.batching import (
    PreparesAhead,
    UnusableImagesError,
    prepare_images,
    run_ahead,
)
from model_loaders.grounding_dino import GroundingDinoModel
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks import label as label_module
from tasks.labels import read_images, read_labels
from tasks.settings import LabelSettings
from tests.detections import assert_same_detections
from tests.labeling import label_folder

ONTOLOGY = Ontology.from_class_options(["person", "cat", "rocket"])


def test_run_ahead_yields_every_item_in_order_and_raises_where_it_stopped() -> None:
    def numbers():
        yield from range(5)
        raise RuntimeError("source broke after 5")

    seen = []
    with pytest.raises(RuntimeError, match="source broke after 5"):
        for item in run_ahead(numbers(), depth=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_closing_run_ahead_early_stops_and_closes_the_producer() -> None:
    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    before = threading.active_count()
    feed = run_ahead(endless(), depth=2)
    assert [next(feed) for _ in range(3)] == [0, 1, 2]
    feed.close()
    assert closed.is_set()  # the source was closed, on the producer's thread
    assert threading.active_count() == before


def test_images_of_one_size_prepared_together_get_the_same_pixels(
    tiny_grounding_dino: str, photos
) -> None:
    """One processor call per size (no padding) equals one call per image."""
    processor = _backend(tiny_grounding_dino).processor.image_processor
    images = [photos[0], photos[1], photos[0].copy(), photos[1].copy(), photos[2]]
    alone = prepare_images(images, processor)
    together = prepare_images(images, processor, together={"do_pad": False})
    assert [p.index for p in together] == list(range(len(images)))
    for one, grouped in zip(alone, together, strict=True):
        assert (grouped.height, grouped.width) == (one.height, one.width)
        assert torch.equal(grouped.pixel_values, one.pixel_values)


def test_an_image_that_cannot_be_prepared_is_named_among_same_size_mates(
    tiny_grounding_dino: str, photos
) -> None:
    backend = _backend(tiny_grounding_dino)
    strip = Image.new("RGB", (20000, 2))
    images = [photos[0], strip, strip.copy(), photos[0].copy()]
    with pytest.raises(UnusableImagesError) as raised:
        prepare_images(
            images, backend.processor.image_processor, together={"do_pad": False}
        )
    assert sorted(raised.value.reasons) == [1, 2]


def test_prepared_predictions_equal_predict(tiny_grounding_dino: str, photos) -> None:
    backend = _backend(tiny_grounding_dino, batch_size=2)
    assert isinstance(backend, PreparesAhead)
    images = photos + photos[:2]
    direct = backend.predict(images, ONTOLOGY, confidence_floor=0.1)
    staged = backend.predict_prepared(
        backend.prepare(images, ONTOLOGY), ONTOLOGY, confidence_floor=0.1
    )
    # Random weights: boxes on every photo.
    assert_same_detections(direct, staged, images=len(images))


def test_a_post_processing_error_stops_the_chunk_and_leaves_no_thread(
    tiny_grounding_dino: str, photos, tmp_path: Path
) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    for index, photo in enumerate(photos * 3):
        photo.save(source / f"{index:02d}.jpg")
    settings = LabelSettings(
        ontology=ONTOLOGY,
        model=ModelSpec(model=tiny_grounding_dino, device="cpu", batch_size=2),
    )
    (chunk,) = label_module.plan_chunks(str(source), settings)
    before = threading.active_count()

    def broken_keep(detections):
        raise ValueError("thresholds broke")

    with pytest.raises(ValueError, match="thresholds broke"):
        label_module.predict_labels(
            chunk.refs,
            settings,
            confidence_floor=0.1,
            run_id="r",
            keep=broken_keep,
        )
    assert threading.active_count() == before
    # The same chunk then labels normally: rows for every image, in file order.
    out = label_folder(source, tmp_path / "out", settings)
    images = read_images(out)
    assert images["relative_path"].tolist() == sorted(p.name for p in source.iterdir())
    assert set(read_labels(out)["image_id"]) == set(images["image_id"])


def _backend(path: str, batch_size: int = 8) -> GroundingDinoModel:
    backend = cache.get_model(
        ModelSpec(model=path, device="cpu", batch_size=batch_size)
    )
    assert type(backend) is GroundingDinoModel
    return backend
