"""Pascal VOC export in Roboflow's layout (``voc/<split>/`` with each image and its
``<stem>.xml``), read back by supervision's own reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import supervision as sv

from tasks.export_voc import labels_to_pascal_voc, write_voc
from tasks.labels import OutputLayout, read_images
from tasks.splits import Splits
from tests.tasks.export_folders import (
    CLASS_NAMES,
    expected_boxes,
    sorted_boxes,
    write_output_folder,
)
from tests.tasks.test_export_segmentation import (
    BEYOND_BOX_MASK_XYXY,
    EMPTY_MASK_XYXY,
    write_mask_beyond_box_folder,
)

RELATIVE_PATHS = {
    "a__x.jpg": "a/x.jpg",
    "b__x.jpg": "b/x.jpg",
    "empty.png": "empty.png",
    "rotated.jpg": "rotated.jpg",
}
HALVES = Splits(train=0.5, val=0.5)


def _read(split_dir: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Each image's (xyxy, class names) as supervision reads the split folder."""
    dataset = sv.DetectionDataset.from_pascal_voc(
        images_directory_path=str(split_dir),
        annotations_directory_path=str(split_dir),
    )
    return {
        Path(path).name: (
            dataset.annotations[path].xyxy.astype(float),
            [dataset.classes[i] for i in dataset.annotations[path].class_id],
        )
        for path in dataset.image_paths
    }


def _assert_boxes_match(name: str, xyxy: np.ndarray, classes: list[str]) -> None:
    class_id = np.array([CLASS_NAMES.index(c) for c in classes], dtype=int)
    got_xyxy, got_class_id = sorted_boxes(xyxy.reshape(-1, 4), class_id)
    expected_xyxy, expected_class_id = expected_boxes(RELATIVE_PATHS[name])
    np.testing.assert_array_equal(got_class_id, expected_class_id)
    # VOC boxes are whole pixels: within half a pixel of the label table's.
    np.testing.assert_allclose(got_xyxy, expected_xyxy, atol=0.5)


def test_supervision_reads_back_every_image_and_its_boxes(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)

    assert write_voc(layout, CLASS_NAMES) == layout.voc_dir

    assert [p.name for p in layout.voc_dir.iterdir()] == ["train"]
    train = layout.voc_dir / "train"
    assert sorted(p.name for p in train.iterdir()) == sorted(
        [*RELATIVE_PATHS, "a__x.xml", "b__x.xml", "empty.xml", "rotated.xml"]
    )
    found = _read(train)
    assert sorted(found) == sorted(RELATIVE_PATHS)  # every image, each checked below
    for name, (xyxy, classes) in found.items():
        _assert_boxes_match(name, xyxy, classes)
    assert found["empty.png"][0].shape == (0, 4)
    assert "<filename>a__x.jpg</filename>" in (train / "a__x.xml").read_text()


def test_each_image_is_in_exactly_one_split(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)
    manifest = read_images(layout).set_index("relative_path")

    write_voc(layout, CLASS_NAMES, HALVES)

    assert sorted(p.name for p in layout.voc_dir.iterdir()) == ["train", "valid"]
    seen: dict[str, str] = {}
    for split, folder in (("train", "train"), ("val", "valid")):
        for name, (xyxy, classes) in _read(layout.voc_dir / folder).items():
            assert name not in seen
            seen[name] = split
            _assert_boxes_match(name, xyxy, classes)
    assert sorted(seen) == sorted(RELATIVE_PATHS)  # the union is all images
    assert seen == {
        name: HALVES.split_of(manifest.loc[RELATIVE_PATHS[name], "image_id"])
        for name in seen
    }
    assert sorted(set(seen.values())) == ["train", "val"]


def test_a_mask_is_written_as_the_same_box_as_in_coco(tmp_path: Path) -> None:
    layout = write_mask_beyond_box_folder(tmp_path)

    write_voc(layout, ["cat", "dog"])

    (xyxy, classes), *others = _read(layout.voc_dir / "train").values()
    assert others == []
    assert sorted(zip(classes, xyxy.tolist(), strict=True)) == [
        ("cat", BEYOND_BOX_MASK_XYXY),  # the mask's extent, not the detector's box
        ("dog", EMPTY_MASK_XYXY),  # an empty mask keeps the detector's box
    ]
    xml = (layout.voc_dir / "train" / "m.xml").read_text()
    assert "<polygon>" not in xml and xml.count("<object>") == 2


def test_labels_to_pascal_voc_rounds_to_voc_pixels() -> None:
    labels = pd.DataFrame(
        {
            "class_id": [1],
            "x_min": [0.0],
            "y_min": [2.4],
            "x_max": [20.6],
            "y_max": [15.0],
            "mask": [None],
        }
    )

    xml = labels_to_pascal_voc(
        labels, CLASS_NAMES, filename="x.jpg", resolution_wh=(40, 30)
    )

    assert "<name>dog</name>" in xml
    # 1-based inclusive minima, maxima the far edge (supervision's convention).
    for tag, value in (("xmin", 1), ("ymin", 3), ("xmax", 21), ("ymax", 15)):
        assert f"<{tag}>{value}</{tag}>" in xml
    assert "<width>40</width>" in xml and "<height>30</height>" in xml


def test_an_export_replaces_stale_files(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)
    stale = layout.voc_dir / "train" / "renamed.xml"
    stale.parent.mkdir(parents=True)
    stale.write_text("<annotation/>")

    write_voc(layout, CLASS_NAMES)

    assert not stale.exists()
    assert len(list((layout.voc_dir / "train").glob("*.xml"))) == 4
    assert [p.name for p in layout.root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("splits", [None, HALVES])
def test_two_exports_of_one_folder_are_byte_identical(
    tmp_path: Path, splits: Splits | None
) -> None:
    layout = write_output_folder(tmp_path)
    shutil.copytree(layout.root, tmp_path / "copy")
    copied = OutputLayout(tmp_path / "copy")

    write_voc(layout, CLASS_NAMES, splits)
    write_voc(copied, CLASS_NAMES, splits)

    def files(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file()
        }

    first = files(layout.voc_dir)
    assert first == files(copied.voc_dir)
    assert len(first) == 8  # four images and four XML files
