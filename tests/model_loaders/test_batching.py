"""Images of one size travel together (``size_sorted_groups``), and a folder of mixed
sizes gets the same labels whatever the batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_loaders import batching
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks import label as label_module
from tasks.labels import read_images, read_labels
from tasks.settings import LabelSettings
from tests.labeling import label_folder
from tests.photos import SAMPLE_PHOTOS, sample_image


def _groups(sizes: list[str], **options) -> list[list[tuple[int, str]]]:
    items = list(enumerate(sizes))
    return list(batching.size_sorted_groups(items, size_of=lambda i: i[1], **options))


def test_images_of_one_size_are_grouped_into_full_batches() -> None:
    sizes = ["land", "port", "square"] * 8  # arrival order mixes the sizes
    groups = _groups(sizes, batch_size=4, group_size=8, max_held=100)

    flat = [item for group in groups for item in group]
    assert sorted(flat) == list(enumerate(sizes))  # each once
    # Every group but the last is whole batches of one size each, in arrival order.
    for group in groups[:-1]:
        assert len(group) == 8
        for start in (0, 4):
            batch = group[start : start + 4]
            assert len({size for _, size in batch}) == 1, group
            assert [i for i, _ in batch] == sorted(i for i, _ in batch)
    assert len(groups) == 3


def test_no_more_than_max_held_images_wait() -> None:
    items = [(i, f"size-{i % 10}") for i in range(40)]  # ten sizes: buckets fill slowly
    seen = 0

    def counted():
        nonlocal seen
        for item in items:
            seen += 1
            yield item

    held_max = emitted = 0
    for group in batching.size_sorted_groups(
        counted(), size_of=lambda i: i[1], batch_size=8, group_size=8, max_held=12
    ):
        held_max = max(held_max, seen - emitted)
        emitted += len(group)
    assert emitted == 40
    assert held_max == 12  # reached, never passed


def test_batch_size_one_keeps_arrival_order() -> None:
    sizes = ["a", "b", "a", "c", "b"]
    groups = _groups(sizes, batch_size=1, group_size=2, max_held=4)
    assert [i for group in groups for i, _ in group] == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photos at 6 sizes, landscape and portrait, interleaved in file order."""
    folder = tmp_path_factory.mktemp("mixed-sizes")
    sizes = [(160, 120), (120, 160), (150, 100), (100, 150), (192, 108), (96, 96)]
    for index in range(18):
        photo = sample_image(SAMPLE_PHOTOS[index % len(SAMPLE_PHOTOS)])
        if index % 7 == 3:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        photo.resize(sizes[index % len(sizes)]).save(
            folder / f"img-{index:02d}.jpg", quality=90
        )
    return folder


def _settings(model: str, batch_size: int) -> LabelSettings:
    return LabelSettings(
        ontology=Ontology.from_class_options(["cat", "person", "rocket"]),
        model=ModelSpec(model=model, device="cpu", batch_size=batch_size),
        chunk_size=18,
    )


def test_mixed_size_folder_labels_equal_at_batch_1_and_8(
    tiny_grounding_dino: str,
    mixed_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[tuple[int, int]]] = []  # image sizes of each predict call
    grouped = batching.size_sorted_groups

    def recorded(items, **options):
        for group in grouped(items, **options):
            calls.append([item.image.size for _, item in group])
            yield group

    monkeypatch.setattr(label_module, "size_sorted_groups", recorded)
    single = label_folder(
        mixed_folder, tmp_path / "b1", _settings(tiny_grounding_dino, 1)
    )
    calls.clear()
    batched = label_folder(
        mixed_folder, tmp_path / "b8", _settings(tiny_grounding_dino, 8)
    )

    # Batch 8 really batched: one call held 3 images of each of the 6 sizes.
    assert len(calls) == 1 and len(calls[0]) == 18
    assert len(set(calls[0])) == 6
    labels_1, labels_8 = read_labels(single), read_labels(batched)
    assert len(labels_1) > 18  # random weights: many boxes on every image
    assert set(labels_1["image_id"]) == set(read_images(single)["image_id"])
    order = ["image_id", "class_name", "confidence", "x_min", "y_min"]
    one, eight = (
        frame.sort_values(order, ascending=[True, True, False, True, True])
        for frame in (labels_1, labels_8)
    )
    assert one["image_id"].tolist() == eight["image_id"].tolist()
    assert one["class_name"].tolist() == eight["class_name"].tolist()
    for column, atol in [("confidence", 1e-5), ("x_min", 1e-3), ("y_max", 1e-3)]:
        np.testing.assert_allclose(one[column], eight[column], atol=atol)
