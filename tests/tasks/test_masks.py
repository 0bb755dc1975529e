"""Masks: COCO RLE helpers, exact COCO polygons, YOLO polygons, the mask column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pycocotools.mask as coco_mask
import pytest
import supervision as sv

from tasks import masks as masks_module
from tasks.labels import (
    LABEL_COLUMNS,
    ImageRecord,
    OutputLayout,
    detections_to_frame,
    frame_to_detections,
    read_labels,
)
from tasks.masks import (
    join_polygons,
    mask_to_coco_polygons,
    mask_to_rle,
    mask_to_yolo_polygon,
    masks_to_rles,
    rle_area,
    rle_to_mask,
    rle_to_xyxy,
)
from tests.tasks.mask_shapes import SHAPES


@pytest.mark.parametrize("name", SHAPES)
def test_rle_round_trips_exactly_with_its_pixel_count(name: str) -> None:
    mask = SHAPES[name]

    rle = mask_to_rle(mask)

    assert rle["size"] == list(mask.shape)  # [height, width], COCO's order
    assert isinstance(rle["counts"], str)
    json.dumps(rle)  # ready for a JSON string column
    np.testing.assert_array_equal(rle_to_mask(rle), mask)
    assert rle_area(rle) == int(mask.sum())


def test_a_stack_encodes_like_each_mask_alone() -> None:
    stack = np.stack([SHAPES["hole"], SHAPES["two parts"], SHAPES["square"]])

    assert masks_to_rles(stack) == [mask_to_rle(m) for m in stack]
    assert masks_to_rles(np.zeros((0, 5, 5), dtype=bool)) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("square", (5.0, 5.0, 30.0, 30.0)),
        ("two parts", (2.0, 2.0, 38.0, 28.0)),
        ("empty", (0.0, 0.0, 0.0, 0.0)),
    ],
)
def test_rle_tight_box_is_on_pixel_edges(name: str, expected: tuple) -> None:
    assert rle_to_xyxy(mask_to_rle(SHAPES[name])) == expected


@pytest.mark.parametrize("name", [n for n in SHAPES if n != "empty"])
def test_coco_polygons_reproduce_the_mask_exactly_in_pycocotools(name: str) -> None:
    mask = SHAPES[name]
    height, width = mask.shape

    polygons = mask_to_coco_polygons(mask)

    assert polygons, "expected polygons, not the RLE fallback"
    drawn = coco_mask.decode(
        coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    ).astype(bool)
    np.testing.assert_array_equal(drawn, mask)


def test_coco_polygons_keep_separate_parts_as_separate_polygons() -> None:
    assert len(mask_to_coco_polygons(SHAPES["two parts"])) == 2
    assert len(mask_to_coco_polygons(SHAPES["hole"])) == 1  # hole spliced in


def test_coco_polygons_of_an_empty_mask_are_none_of_them() -> None:
    assert mask_to_coco_polygons(SHAPES["empty"]) == []


def test_coco_polygons_give_up_rather_than_lose_pixels(monkeypatch) -> None:
    """No seam for a hole, or polygons that would draw other pixels: None (keep RLE)."""

    def no_seam(*args, **kwargs):
        raise ValueError("No foreground-contained seam found for a mask hole.")

    monkeypatch.setattr(masks_module, "approximate_mask_with_polygons", no_seam)
    assert mask_to_coco_polygons(SHAPES["hole"]) is None

    def hole_dropped(mask, **kwargs):  # outer contour only: the hole would be filled
        return [np.array([[1, 1], [1, 40], [50, 40], [50, 1]])]

    monkeypatch.setattr(masks_module, "approximate_mask_with_polygons", hole_dropped)
    assert mask_to_coco_polygons(SHAPES["hole"]) is None


@pytest.mark.parametrize(
    ("name", "min_iou", "hole_pixel_yx"),
    [
        ("square", 1.0, None),
        ("hole", 1.0, (14, 16)),  # the seam runs along foreground pixels: exact
        ("disk with a disk hole", 1.0, (18, 20)),
        ("two parts", 0.95, None),  # the seam between parts adds a line of pixels
        ("hole and two parts", 0.95, (16, 16)),
    ],
)
def test_yolo_polygon_is_one_polygon_that_cv2_draws_back(
    name: str, min_iou: float, hole_pixel_yx: tuple[int, int] | None
) -> None:
    mask = SHAPES[name]
    height, width = mask.shape

    polygon = mask_to_yolo_polygon(mask)

    assert polygon.ndim == 2 and polygon.shape[1] == 2
    drawn = sv.polygon_to_mask(np.round(polygon).astype(np.int32), (width, height))
    drawn = drawn.astype(bool)
    assert (drawn & mask).sum() / (drawn | mask).sum() >= min_iou
    assert drawn[mask].all()  # nothing of the object is lost
    if hole_pixel_yx is not None:
        assert not mask[hole_pixel_yx] and not drawn[hole_pixel_yx]


def test_yolo_polygon_of_an_empty_mask_is_none() -> None:
    assert mask_to_yolo_polygon(SHAPES["empty"]) is None


def test_join_polygons_visits_every_part_once_via_the_nearest_vertices() -> None:
    a = np.array([[0, 0], [4, 0], [4, 4], [0, 4]])
    b = np.array([[10, 0], [14, 0], [14, 4], [10, 4]])

    joined = join_polygons([a, b])

    # a up to its vertex nearest b, all of b from its nearest vertex and back, rest of a
    expected = [[0, 0], [4, 0], [10, 0], [14, 0], [14, 4], [10, 4], [10, 0], [4, 0]]
    assert joined.tolist() == [*expected, [4, 4], [0, 4]]


# --- The label table's mask column -------------------------------------------------

RECORD = ImageRecord(
    source_uri="/data/a.jpg", relative_path="a.jpg", image_id="a", width=40, height=30
)


def _detections(with_masks: bool) -> sv.Detections:
    masks = np.stack([SHAPES["hole"], SHAPES["two parts"]])
    return sv.Detections(
        xyxy=np.array([[5, 5, 30, 25], [2, 2, 38, 28]], dtype=np.float32),
        mask=masks if with_masks else None,
        confidence=np.array([0.9, 0.6], dtype=np.float32),
        class_id=np.array([0, 1]),
        data={
            "class_name": np.array(["cat", "dog"]),
            "prompt": np.array(["cat", "dog"]),
        },
    )


def test_masks_are_stored_as_rle_json_and_read_back_exactly() -> None:
    detections = _detections(with_masks=True)

    frame = detections_to_frame(detections, RECORD, model="m", run_id="r")

    assert list(frame.columns) == LABEL_COLUMNS
    first = json.loads(frame["mask"].iloc[0])
    assert first == mask_to_rle(SHAPES["hole"])
    back = frame_to_detections(frame)
    np.testing.assert_array_equal(back.mask, detections.mask)
    np.testing.assert_allclose(back.xyxy, detections.xyxy)


def test_detection_rows_leave_the_mask_null_and_come_back_without_one() -> None:
    frame = detections_to_frame(_detections(False), RECORD, model="m", run_id="r")

    assert len(frame) == 2 and frame["mask"].isna().all()
    assert frame_to_detections(frame).mask is None


def test_a_row_without_a_mask_among_masked_rows_reads_as_an_empty_mask() -> None:
    frame = detections_to_frame(_detections(True), RECORD, model="m", run_id="r")
    frame.loc[1, "mask"] = None

    back = frame_to_detections(frame)

    assert back.mask.shape == (2, 30, 40)
    assert not back.mask[1].any()


def test_masks_of_another_size_than_the_image_are_refused() -> None:
    detections = _detections(True)
    detections.mask = detections.mask[:, :20, :]

    with pytest.raises(ValueError, match="do not fit"):
        detections_to_frame(detections, RECORD, model="m", run_id="r")


def test_an_older_shard_without_the_mask_column_still_reads(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    frame = detections_to_frame(_detections(False), RECORD, model="m", run_id="r")
    old = pa.Table.from_pandas(frame.drop(columns=["mask"]), preserve_index=False)
    layout.labels_dir.mkdir(parents=True)
    pq.write_table(old, layout.labels_dir / "chunk-old.parquet")

    labels = read_labels(layout)

    assert list(labels.columns) == LABEL_COLUMNS
    assert labels["mask"].isna().all() and len(labels) == 2
    pd.testing.assert_series_equal(labels["x_min"], frame["x_min"])
