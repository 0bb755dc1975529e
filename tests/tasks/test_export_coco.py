"""COCO export: the dict (golden file), the written folder, and independent readers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import supervision as sv
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.export_coco import labels_to_coco, write_coco
from tests.tasks.export_folders import (
    CLASS_NAMES,
    SKIPPED,
    SOURCE_IMAGES,
    expected_boxes,
    small_tables,
    sorted_boxes,
    write_output_folder,
)

GOLDEN = Path(__file__).parent / "golden" / "coco_small.json"


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, dict]:
    layout = write_output_folder(tmp_path)
    path = write_coco(layout, CLASS_NAMES)
    return path, json.loads(path.read_text())


def test_coco_dict_matches_golden_file() -> None:
    images, labels = small_tables(Path("/data/source"))

    coco = labels_to_coco(images, labels, CLASS_NAMES)

    # Text, not dicts: 0 == False == 0.0 in Python, but not for a COCO reader.
    assert json.dumps(coco, indent=1) + "\n" == GOLDEN.read_text()


def test_coco_dict_lists_images_by_path_and_leaves_skipped_ones_out() -> None:
    images, labels = small_tables(Path("/data/source"))
    shuffled = images.iloc[::-1].reset_index(drop=True)

    coco = labels_to_coco(shuffled, labels.iloc[::-1], CLASS_NAMES)

    assert [image["file_name"] for image in coco["images"]] == [
        "images/a/x.jpg",
        "images/b/x.jpg",
        "images/empty.png",
        "images/rotated.jpg",
    ]
    assert json.dumps(coco, indent=1) + "\n" == GOLDEN.read_text()  # order-free


def test_identical_files_in_two_folders_keep_their_own_boxes() -> None:
    images, labels = small_tables(Path("/data/source"))
    # Same content hash for a/x.jpg and b/x.jpg, as for two copies of one photo.
    images["image_id"] = images["image_id"].replace("b/x.jpg", "a/x.jpg")
    labels["image_id"] = labels["image_id"].replace("b/x.jpg", "a/x.jpg")

    coco = labels_to_coco(images, labels, CLASS_NAMES)

    boxes_per_image = [
        [ann["bbox"] for ann in coco["annotations"] if ann["image_id"] == image_id]
        for image_id in (1, 2)
    ]
    assert boxes_per_image == [
        [[4.0, 6.0, 26.0, 34.0], [10.5, 2.25, 49.5, 45.25]],
        [[0.0, 0.0, 20.0, 15.0]],
    ]


def _break_class_id(labels: pd.DataFrame) -> pd.DataFrame:
    return labels.assign(class_id=labels["class_id"] + 1)


def _break_class_name(labels: pd.DataFrame) -> pd.DataFrame:
    return labels.assign(class_name="bird")


def _orphan_label(labels: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([labels, labels.iloc[:1].assign(source_uri="/elsewhere/x.jpg")])


@pytest.mark.parametrize(
    ("break_labels", "break_images", "message"),
    [
        (_break_class_id, None, "outside"),
        (_break_class_name, None, "disagree"),
        (_orphan_label, None, "missing from the manifest"),
        (
            None,
            lambda images: images.assign(relative_path="same.jpg"),
            "share a relative path",
        ),
    ],
)
def test_coco_dict_refuses_inconsistent_tables(break_labels, break_images, message):
    images, labels = small_tables(Path("/data/source"))
    labels = break_labels(labels) if break_labels else labels
    images = break_images(images) if break_images else images

    with pytest.raises(ValueError, match=message):
        labels_to_coco(images, labels, CLASS_NAMES)


def test_coco_file_loads_in_pycocotools(exported: tuple[Path, dict]) -> None:
    path, _ = exported

    coco = COCO(str(path))

    assert len(coco.imgs) == 4
    assert len(coco.anns) == 4
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == CLASS_NAMES
    for image in coco.imgs.values():
        relative_path = image["file_name"].removeprefix("images/")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        xywh = np.array([ann["bbox"] for ann in anns], dtype=float).reshape(-1, 4)
        class_id = np.array([ann["category_id"] - 1 for ann in anns], dtype=int)
        xyxy, class_id = sorted_boxes(sv.xywh_to_xyxy(xywh), class_id)
        expected_xyxy, expected_class_id = expected_boxes(relative_path)
        np.testing.assert_allclose(xyxy, expected_xyxy)
        np.testing.assert_array_equal(class_id, expected_class_id)


def test_scores_make_the_file_a_detection_result_for_cocoeval(
    exported: tuple[Path, dict],
) -> None:
    path, coco_dict = exported
    ground_truth = COCO(str(path))
    detections = ground_truth.loadRes(copy.deepcopy(coco_dict["annotations"]))

    evaluation = COCOeval(ground_truth, detections, iouType="bbox")
    evaluation.evaluate()
    evaluation.accumulate()

    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP@[.5:.95] of itself


def test_supervision_reads_back_the_parquet_boxes(exported: tuple[Path, dict]) -> None:
    path, _ = exported

    dataset = sv.DetectionDataset.from_coco(
        images_directory_path=str(path.parent), annotations_path=str(path)
    )

    assert dataset.classes == CLASS_NAMES
    images_dir = (path.parent / "images").resolve()
    relative = {
        Path(image_path).relative_to(images_dir).as_posix(): image_path
        for image_path in dataset.image_paths
    }
    assert sorted(relative) == sorted(image.relative_path for image in SOURCE_IMAGES)
    for relative_path, image_path in relative.items():
        detections = dataset.annotations[image_path]
        xyxy, class_id = sorted_boxes(
            detections.xyxy.astype(float), np.asarray(detections.class_id, dtype=int)
        )
        expected_xyxy, expected_class_id = expected_boxes(relative_path)
        np.testing.assert_allclose(xyxy, expected_xyxy, rtol=1e-3)
        np.testing.assert_array_equal(class_id, expected_class_id)


def test_export_folder_holds_upright_images_and_no_skipped_ones(
    exported: tuple[Path, dict],
) -> None:
    path, coco_dict = exported
    images_dir = path.parent / "images"

    files = sorted(p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*"))

    assert files == ["a", "a/x.jpg", "b", "b/x.jpg", "empty.png", "rotated.jpg"]
    assert SKIPPED not in json.dumps(coco_dict)
    assert len(coco_dict["images"]) == 4  # the readable images, each checked below
    for image in coco_dict["images"]:
        with Image.open(path.parent / image["file_name"]) as stored:
            assert stored.size == (image["width"], image["height"])
