"""YOLO export: lines (expected literals), Roboflow's split layout, data.yaml,
supervision's reader, export_names.parquet, determinism and the folder swap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks import export_yolo
from tasks.export_yolo import labels_to_yolo_lines, write_yolo
from tasks.labels import OutputLayout, read_images
from tasks.splits import ROBOFLOW_FOLDERS, Splits
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
# image without boxes gets an empty file, the skipped broken.jpg gets none; names are
# flat (a/x.jpg -> a__x.jpg).
EXPECTED_LABEL_FILES = {
    "a__x.txt": (
        "0 0.265625 0.479167 0.406250 0.708333\n"  # cat [4, 6, 30, 40] on 64x48
        "1 0.550781 0.518229 0.773438 0.942708\n"  # dog [10.5, 2.25, 60, 47.5]
    ),
    "b__x.txt": "1 0.250000 0.250000 0.500000 0.500000\n",  # dog [0, 0, 20, 15], 40x30
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


def _export_names(layout: OutputLayout) -> pd.DataFrame:
    return pd.read_parquet(layout.export_names)


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_export_writes_expected_label_files(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)

    data_yaml = write_yolo(layout, CLASS_NAMES)

    # Flat names, each image in the folder of its split (train + a 10% val).
    splits = Splits().with_val()
    split_of = {
        row.export_name: ROBOFLOW_FOLDERS[splits.split_of(row.image_id)]
        for row in _export_names(layout).itertuples()
    }
    expected_images = {
        f"{split_of[name]}/images/{name}"
        for name in ["a__x.jpg", "b__x.jpg", "empty.png", "rotated.jpg"]
    }
    expected_labels = {
        f"{split_of[name]}/labels/{label}": text
        for label, text in EXPECTED_LABEL_FILES.items()
        for name in split_of
        if Path(name).stem == Path(label).stem
    }
    assert len(expected_labels) == 4
    written = _files(data_yaml.parent)
    assert {k for k in written if "/images/" in k} == expected_images
    assert {
        k: v.decode() for k, v in written.items() if "/labels/" in k
    } == expected_labels
    assert set(written) == expected_images | set(expected_labels) | {"data.yaml"}


@pytest.mark.parametrize(
    ("splits", "expected"),
    [
        (
            None,
            {"train": "train/images", "val": "valid/images"},
        ),
        (
            Splits(train=0.5, val=0.25, test=0.25),
            {"train": "train/images", "val": "valid/images", "test": "test/images"},
        ),
    ],
    ids=["default", "with-test"],
)
def test_data_yaml_names_the_splits_and_classes_in_class_id_order(
    splits: Splits | None, expected: dict[str, str], tmp_path: Path
) -> None:
    layout = write_output_folder(tmp_path)

    data_yaml = write_yolo(layout, CLASS_NAMES, splits)

    assert data_yaml == layout.yolo_dir / "data.yaml"
    data = yaml.safe_load(data_yaml.read_text())
    # No `path`: Ultralytics then resolves the splits against the yaml's folder.
    assert data == {**expected, "nc": 2, "names": {0: "cat", 1: "dog"}}
    checked = 0
    for split, images in expected.items():
        assert (data_yaml.parent / images).is_dir(), split
        assert (data_yaml.parent / images).parent.joinpath("labels").is_dir(), split
        checked += 1
    assert checked == len(expected)
    assert sorted(p.name for p in data_yaml.parent.iterdir()) == sorted(
        ["data.yaml", *(images.split("/")[0] for images in expected.values())]
    )


def test_supervision_reads_every_image_of_each_split_with_its_boxes(
    tmp_path: Path,
) -> None:
    layout = write_output_folder(tmp_path)
    data_yaml = write_yolo(layout, CLASS_NAMES)

    classes, found = read_yolo_tree(data_yaml)

    assert classes == CLASS_NAMES
    relative_path_of = dict(
        zip(
            _export_names(layout)["export_name"],
            _export_names(layout)["relative_path"],
            strict=True,
        )
    )
    # a/x.jpg and b/x.jpg (nested, one name) are both read, as a__x.jpg and b__x.jpg.
    assert sorted(relative_path_of[name] for name in found) == sorted(
        image.relative_path for image in SOURCE_IMAGES
    )
    checked = 0
    for name, detections in found.items():
        xyxy, class_id = sorted_boxes(
            detections.xyxy.astype(float), np.asarray(detections.class_id, dtype=int)
        )
        expected_xyxy, expected_class_id = expected_boxes(relative_path_of[name])
        # Six decimals of a <= 64 px image: well under a thousandth of a pixel.
        np.testing.assert_allclose(xyxy, expected_xyxy, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(class_id, expected_class_id)
        checked += 1
    assert checked == len(SOURCE_IMAGES)


def test_each_image_is_in_exactly_one_split(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)
    splits = Splits(train=0.5, val=0.5)

    data_yaml = write_yolo(layout, CLASS_NAMES, splits)

    names = _export_names(layout)
    checked = 0
    for row in names.itertuples():
        holders = [
            split
            for split in ("train", "valid", "test")
            if (data_yaml.parent / split / "images" / row.export_name).is_file()
        ]
        assert holders == [ROBOFLOW_FOLDERS[splits.split_of(row.image_id)]], row
        assert row.split == splits.split_of(row.image_id)
        checked += 1
    assert checked == len(SOURCE_IMAGES)
    assert set(names["split"]) == {"train", "val"}  # this fixture fills both


def test_export_names_has_one_row_per_exported_image(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)

    data_yaml = write_yolo(layout, CLASS_NAMES)

    names = _export_names(layout)
    assert list(names.columns) == [
        "image_id",
        "relative_path",
        "source_uri",
        "split",
        "export_name",
    ]
    assert names["relative_path"].tolist() == sorted(
        image.relative_path for image in SOURCE_IMAGES
    )  # broken.jpg (skipped) is not exported
    assert names["export_name"].tolist() == [
        "a__x.jpg",
        "b__x.jpg",
        "empty.png",
        "rotated.jpg",
    ]
    on_disk = sorted(
        path.relative_to(data_yaml.parent).as_posix()
        for path in data_yaml.parent.glob("*/images/*")
    )
    assert on_disk == sorted(
        f"{ROBOFLOW_FOLDERS[row.split]}/images/{row.export_name}"
        for row in names.itertuples()
    )
    manifest = read_images(layout).set_index("relative_path")
    checked = 0
    for row in names.itertuples():
        assert manifest.loc[row.relative_path, "image_id"] == row.image_id
        assert manifest.loc[row.relative_path, "source_uri"] == row.source_uri
        checked += 1
    assert checked == 4


def test_two_exports_are_byte_identical(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)
    write_yolo(layout, CLASS_NAMES)
    first = _files(layout.yolo_dir)
    first_names = layout.export_names.read_bytes()

    write_yolo(layout, CLASS_NAMES)

    assert _files(layout.yolo_dir) == first
    assert len(first) == 9  # data.yaml + 4 images + 4 label files
    assert layout.export_names.read_bytes() == first_names


def test_stale_files_and_the_old_layout_are_gone(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)
    old = layout.yolo_dir / "images" / "a" / "x.jpg"  # the layout before issue 15
    stale = layout.yolo_dir / "train" / "labels" / "gone.txt"
    for path in (old, stale):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old")

    write_yolo(layout, CLASS_NAMES)

    assert not old.exists() and not stale.exists()
    assert not (layout.yolo_dir / "images").exists()
    assert sorted(p.name for p in layout.root.iterdir() if p.name.startswith(".")) == []


def test_a_crash_leaves_the_previous_export_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = write_output_folder(tmp_path)
    write_yolo(layout, CLASS_NAMES)
    before = _files(layout.yolo_dir)
    calls = []

    def fail_on_the_third_image(labels, *, resolution_wh):
        calls.append(resolution_wh)
        if len(calls) == 3:
            raise OSError("disk full")
        return labels_to_yolo_lines(labels, resolution_wh=resolution_wh)

    monkeypatch.setattr(export_yolo, "labels_to_yolo_lines", fail_on_the_third_image)

    with pytest.raises(OSError, match="disk full"):
        write_yolo(layout, CLASS_NAMES)

    assert len(calls) == 3
    assert _files(layout.yolo_dir) == before
    assert [p.name for p in layout.root.iterdir() if p.name.startswith(".yolo")] == []


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

    data_yaml = write_yolo(layout, CLASS_NAMES, Splits(train=1.0))

    # x.jpg sorts first and keeps its name; x.png gets its relative path's hash.
    # Splits(train=1.0).with_val() still has a (here empty) val split.
    renamed = "x-3910c650"
    train = layout.yolo_dir / "train"
    assert sorted(p.name for p in (train / "images").iterdir()) == [
        f"{renamed}.png",
        "x.jpg",
    ]
    assert sorted(p.name for p in (train / "labels").iterdir()) == [
        f"{renamed}.txt",
        "x.txt",
    ]
    assert list((layout.yolo_dir / "valid" / "images").iterdir()) == []
    _, found = read_yolo_tree(data_yaml)
    assert sorted(found) == [f"{renamed}.png", "x.jpg"]
