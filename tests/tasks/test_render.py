"""Annotated preview images: boxes and labels drawn, one color per class, paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from tasks.render import annotate_image, rendered_path, thumbnail_data_uri


def _detections(class_ids: list[int], boxes: list[tuple[int, int, int, int]]):
    names = np.array(["can", "person"])[class_ids]
    return sv.Detections(
        xyxy=np.array(boxes, dtype=np.float32),
        confidence=np.full(len(boxes), 0.87, dtype=np.float32),
        class_id=np.array(class_ids),
        data={"class_name": names, "prompt": names},
    )


def _border_color(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


def test_boxes_are_drawn_with_one_color_per_class():
    gray = Image.new("RGB", (400, 300), (128, 128, 128))
    detections = _detections([0, 1, 0], [(20, 150, 100, 290), (150, 150, 250, 290),
                                          (280, 150, 390, 290)])  # fmt: skip
    drawn = annotate_image(gray, detections, ["can", "person"])
    assert drawn.size == gray.size
    assert np.asarray(gray).mean() == 128  # the input is left alone
    # Left edge of each box, below its label: same class, same color.
    first, second, third = (_border_color(drawn, x, 250) for x in (20, 150, 280))
    assert first == third != second
    assert first != (128, 128, 128)
    # Drawing again gives the same pixels (deterministic colors).
    again = annotate_image(gray, detections, ["can", "person"])
    assert np.array_equal(np.asarray(drawn), np.asarray(again))


def test_masks_are_tinted_in_their_class_color():
    gray = Image.new("RGB", (200, 100), (128, 128, 128))
    detections = _detections([1], [(10, 10, 190, 90)])
    mask = np.zeros((1, 100, 200), dtype=bool)
    mask[0, 40:80, 60:140] = True
    detections.mask = mask
    drawn = np.asarray(annotate_image(gray, detections, ["can", "person"]))
    assert tuple(drawn[60, 100]) != (128, 128, 128)  # inside the mask
    assert tuple(drawn[60, 40]) == (128, 128, 128)  # inside the box, outside the mask


def test_an_image_without_labels_is_a_plain_copy():
    gray = Image.new("RGB", (64, 48), (10, 20, 30))
    drawn = annotate_image(gray, sv.Detections.empty(), ["can"])
    assert np.array_equal(np.asarray(drawn), np.asarray(gray))


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("a.jpg", "a.jpg"),
        ("sub/b.JPEG", "sub/b.JPEG"),
        ("sub/c.png", "sub/c.png.jpg"),
    ],
)
def test_rendered_path_mirrors_the_source_tree(relative, expected):
    assert rendered_path(Path("/p"), relative) == Path("/p") / expected


@pytest.mark.parametrize("relative", ["../x.jpg", "/abs/x.jpg"])
def test_rendered_path_refuses_paths_outside(relative):
    with pytest.raises(ValueError, match="not a relative path"):
        rendered_path(Path("/p"), relative)


def test_thumbnail_data_uri_is_a_small_jpeg(tmp_path: Path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1000), (200, 10, 10)).save(path)
    uri = thumbnail_data_uri(path, max_side=100)
    assert uri.startswith("data:image/jpeg;base64,")
    assert len(uri) < 4000
