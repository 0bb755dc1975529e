"""YOLO export: lines (expected literals), folder layout, supervision's reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.export_yolo import labels_to_yolo_lines, write_yolo
from tasks.labels import OutputLayout
from tests.tasks.export_folders import (
    CLASS_NAMES,
    SOURCE_IMAGES,
    SourceImage,
    expected_boxes,
    label_frame,
    read_yolo_tree,
    record_of,
    sorted_boxes,
    write_output_folder,
    write_shard,
    write_source_image,
)

# The label files of the shared fixture, worked out by hand: boxes by confidence, the
# image without boxes gets an empty file, the skipped broken.jpg gets none.
EXPECTED_LABEL_FILES = {
    "a/x.txt": (
        "0 0.265625 0.479167 0.406250 0.708333\n"  # cat [4, 6, 30, 40] on 64x48
        "1 0.550781 0.518229 0.773438 0.942708\n"  # dog [10.5, 2.25, 60, 47.5]
    ),
    "b/x.txt": "1 0.250000 0.250000 0.500000 0.500000\n",  # dog [0, 0, 20, 15], 40x30
    "empty.txt": "",
    "rotated.txt": "0 0.500000 0.500000 0.800000 0.750000\n",  # [2, 5, 18, 35], 20x40
}


def _labels(rows: list[tuple[int, float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        rows, columns=["class_id", "x_min", "y_min", "x_max", "y_max"]
    ).astype({"class_id": "int32", "x_min": float})


@pytest.mark.parametrize(
    ("rows", "resolution_wh", "expected"),
    [
        ([], (20, 40), []),
        ([(1, 0, 0, 20, 15)], (40, 30), ["1 0.250000 0.250000 0.500000 0.500000"]),
        (  # row order is kept; 6 decimals, rounded
            [(1, 10.5, 2.25, 60, 47.5), (0, 4, 6, 30, 40)],
            (64, 48),
            [
                "1 0.550781 0.518229 0.773438 0.942708",
                "0 0.265625 0.479167 0.406250 0.708333",
            ],
        ),
        (  # a box poking out of the frame keeps its visible part
            [(0, -5, -5, 10, 50)],
            (20, 40),
            ["0 0.250000 0.500000 0.500000 1.000000"],
        ),
        ([(0, 0, 0, 640, 480)], (640, 480), ["0 0.500000 0.500000 1.000000 1.000000"]),
    ],
)
def test_labels_to_yolo_lines(
    rows: list[tuple[int, float, float, float, float]],
    resolution_wh: tuple[int, int],
    expected: list[str],
) -> None:
    assert labels_to_yolo_lines(_labels(rows), resolution_wh=resolution_wh) == expected


def test_export_writes_expected_label_files(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)

    data_yaml = write_yolo(layout, CLASS_NAMES)

    labels_dir = data_yaml.parent / "labels"
    written = {
        path.relative_to(labels_dir).as_posix(): path.read_text()
        for path in labels_dir.rglob("*.txt")
    }
    assert written == EXPECTED_LABEL_FILES
    images_dir = data_yaml.parent / "images"
    assert sorted(
        p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*.*")
    ) == ["a/x.jpg", "b/x.jpg", "empty.png", "rotated.jpg"]


def test_data_yaml_names_classes_in_class_id_order(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)

    data_yaml = write_yolo(layout, CLASS_NAMES)

    assert data_yaml == layout.yolo_dir / "data.yaml"
    assert yaml.safe_load(data_yaml.read_text()) == {
        "names": ["cat", "dog"],
        "nc": 2,
        "train": "images",
        "val": "images",
    }


def test_supervision_reads_back_the_parquet_boxes(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)
    data_yaml = write_yolo(layout, CLASS_NAMES)

    classes, found = read_yolo_tree(data_yaml)

    assert classes == CLASS_NAMES
    assert sorted(found) == sorted(image.relative_path for image in SOURCE_IMAGES)
    for relative_path, detections in found.items():
        xyxy, class_id = sorted_boxes(
            detections.xyxy.astype(float), np.asarray(detections.class_id, dtype=int)
        )
        expected_xyxy, expected_class_id = expected_boxes(relative_path)
        # Six decimals of a <= 64 px image: well under a thousandth of a pixel.
        np.testing.assert_allclose(xyxy, expected_xyxy, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(class_id, expected_class_id)


def test_images_sharing_a_stem_in_one_folder_get_their_own_label_files(
    tmp_path: Path,
) -> None:
    # Changed with issue 14: this used to be refused (ValueError naming x.txt), which
    # failed a run after labeling and charging.
    source_root = tmp_path / "source"
    layout = OutputLayout(tmp_path / "out")
    twins = [
        SourceImage("x.jpg", (8, 8), 1, [], (0, 0, 0), "one"),
        SourceImage("x.png", (8, 8), 1, [], (0, 0, 0), "one"),
    ]
    for image in twins:
        write_source_image(image, source_root / image.relative_path)
    records = [record_of(image, source_root) for image in twins]
    write_shard(layout, "one", label_frame(twins[0], records[0]), records, "run-1")

    data_yaml = write_yolo(layout, CLASS_NAMES)

    # x.jpg sorts first and keeps its name; x.png gets its relative path's hash.
    renamed = "x-3910c650"
    images = sorted(p.name for p in (layout.yolo_dir / "images").iterdir())
    assert images == [f"{renamed}.png", "x.jpg"]
    labels = sorted(p.name for p in (layout.yolo_dir / "labels").iterdir())
    assert labels == [f"{renamed}.txt", "x.txt"]
    _, found = read_yolo_tree(data_yaml)
    assert sorted(found) == [f"{renamed}.png", "x.jpg"]
