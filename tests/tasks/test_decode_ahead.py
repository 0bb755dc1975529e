"""The next chunk's first images are decoded while this chunk finishes
(``tasks.decode_ahead``): the next chunk takes them instead of decoding them again,
labels do not change, and nothing is decoded ahead for a chunk that is finished."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks import images as images_module
from tasks.decode_ahead import DecodeAhead
from tasks.images import DecodedImage, decode_image, decode_with_prefetch
from tasks.label import Chunk, each_with_next, label_chunk, plan_chunks
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.settings import LabelSettings
from tests.labeling import label_folder
from tests.photos import sample_image


@pytest.fixture
def seven_photos(tmp_path: Path) -> Path:
    """Seven small JPEGs of four different photos (two sizes among them)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    names = ("astronaut", "coffee", "chelsea", "rocket")
    for index in range(7):
        image = sample_image(names[index % 4])
        image.thumbnail((160, 160))
        image.save(folder / f"{index:02d}-{names[index % 4]}.jpg", quality=90)
    return folder


@pytest.fixture
def fresh_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The relative paths ``decode_with_prefetch`` decodes itself (not taken from
    what was decoded ahead), in the order it submits them."""
    calls: list[str] = []
    real = images_module.decode_image

    def counting(ref):
        calls.append(ref.relative_path)
        return real(ref)

    monkeypatch.setattr(images_module, "decode_image", counting)
    return calls


def _settings(model: str, chunk_size: int) -> LabelSettings:
    return LabelSettings(
        ontology=Ontology.from_class_options(["person", "cat", "rocket"]),
        model=ModelSpec(model=model, device="cpu", batch_size=2),
        chunk_size=chunk_size,
    )


def _pixels(result) -> np.ndarray:
    assert isinstance(result, DecodedImage), result
    return np.asarray(result.image)


def test_images_decoded_ahead_are_taken_instead_of_decoded_again(
    seven_photos: Path, fresh_decodes: list[str], tmp_path: Path
) -> None:
    refs = images_module.discover_images(seven_photos)
    expected = [decode_image(ref) for ref in refs]
    fresh_decodes.clear()

    with DecodeAhead(tmp_path / "out") as ahead:
        ahead.start(refs[:3])
        decoded = ahead.take()
        assert ahead.take() == {}  # handed over once
        results = list(decode_with_prefetch(refs, lookahead=2, decoded_ahead=decoded))

    assert sorted(decoded) == sorted(ref.uri for ref in refs[:3])
    assert sorted(fresh_decodes) == sorted(ref.relative_path for ref in refs[3:])
    assert len(results) == len(expected) == 7
    for result, reference in zip(results, expected, strict=True):
        assert result.record == reference.record
        assert np.array_equal(_pixels(result), _pixels(reference))


def test_an_image_decoded_from_another_local_copy_is_decoded_again(
    seven_photos: Path, tmp_path: Path
) -> None:
    ref = images_module.discover_images(seven_photos)[0]
    other_copy = tmp_path / "other-copy.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(other_copy)
    now_local = dataclasses.replace(ref, local_path=str(other_copy))

    with DecodeAhead(tmp_path / "out") as ahead:
        ahead.start([ref])  # decoded from the file itself
        (result,) = decode_with_prefetch([now_local], decoded_ahead=ahead.take())

    assert _pixels(result).shape == (30, 40, 3)
    assert np.array_equal(_pixels(result), _pixels(decode_image(now_local)))


def test_leaving_drops_what_no_chunk_took(seven_photos: Path, tmp_path: Path) -> None:
    refs = images_module.discover_images(seven_photos)
    ahead = DecodeAhead(tmp_path / "out")
    with ahead:
        ahead.start(refs[:2])
    assert ahead.take() == {}


def test_chained_chunks_decode_only_the_first_chunk_themselves_with_the_same_labels(
    tiny_grounding_dino: str,
    seven_photos: Path,
    fresh_decodes: list[str],
    tmp_path: Path,
) -> None:
    settings = _settings(tiny_grounding_dino, chunk_size=3)
    chunks = plan_chunks(str(seven_photos), settings)
    assert [len(chunk.refs) for chunk in chunks] == [3, 3, 1]

    cold = OutputLayout(tmp_path / "cold")
    for chunk in chunks:
        label_chunk(chunk, settings, str(cold.root), "run")
    assert len(fresh_decodes) == 7
    fresh_decodes.clear()

    chained = label_folder(seven_photos, tmp_path / "chained", settings, "run")

    # The window (batch 2 x 4 = 8 images) covers the next chunk whole: only the first
    # chunk's images were decoded by the chunk's own loop.
    assert sorted(fresh_decodes) == sorted(ref.relative_path for ref in chunks[0].refs)
    labels = read_labels(chained)
    assert len(labels) > 0
    assert labels.equals(read_labels(cold))
    assert read_images(chained).equals(read_images(cold))


def test_nothing_is_decoded_ahead_for_a_chunk_that_is_finished(
    tiny_grounding_dino: str, seven_photos: Path, tmp_path: Path
) -> None:
    settings = _settings(tiny_grounding_dino, chunk_size=4)
    first, second = plan_chunks(str(seven_photos), settings)
    out = str(tmp_path / "out")
    label_chunk(second, settings, out, "run")  # finished before the first one

    with DecodeAhead(out) as ahead:
        label_chunk(first, settings, out, "run", decode_ahead=ahead, next_chunk=second)
        assert ahead.take() == {}
        third = dataclasses.replace(second, key="not-labeled-yet")
        label_chunk(
            first,
            settings,
            str(tmp_path / "again"),
            "run",
            decode_ahead=ahead,
            next_chunk=third,
        )
        assert sorted(ahead.take()) == sorted(ref.uri for ref in second.refs)


def test_each_chunk_is_paired_with_the_one_labeled_after_it() -> None:
    first, second = Chunk("a", ()), Chunk("b", ())
    assert list(each_with_next([first, second])) == [(first, second), (second, None)]
    assert list(each_with_next([first])) == [(first, None)]
    assert list(each_with_next([])) == []
