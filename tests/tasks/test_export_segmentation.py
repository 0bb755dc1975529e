"""Segmentation exports: COCO (RLE and polygons) and YOLO, read back by pycocotools and
supervision. Masks with holes and with several parts must survive the round trip."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import supervision as sv
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.export_coco import coco_annotations_path, labels_to_coco, write_coco
from tasks.export_yolo import labels_to_yolo_lines, write_yolo
from tasks.labels import (
    ImageRecord,
    OutputLayout,
    detections_to_frame,
    read_images,
    read_labels,
)
from tests.tasks import export_folders
from tests.tasks.export_folders import detections_of, write_shard
from tests.tasks.mask_shapes import SHAPES

CLASS_NAMES = ["cat", "dog"]


@dataclass(frozen=True)
class Labeled:
    """A source image of the fixture and its (class id, score, mask) labels."""

    name: str
    size_wh: tuple[int, int]
    labels: list[tuple[int, float, np.ndarray]]


IMAGES = [
    Labeled(
        "x.png",
        (50, 40),
        [
            (0, 0.9, SHAPES["hole and two parts"]),
            (1, 0.5, SHAPES["hole and two parts"] * 0),
        ],
    ),
    Labeled(
        "y.png",
        (40, 30),
        [
            (1, 0.8, SHAPES["hole"]),
            (0, 0.7, SHAPES["two parts"]),
            (1, 0.6, SHAPES["two holes"]),
        ],
    ),
    Labeled("empty.png", (20, 20), []),
]


def _box(mask: np.ndarray) -> list[float]:
    """A label box: the mask's tight box, or a fixed box for an empty mask."""
    if not mask.any():
        return [1.0, 2.0, 9.0, 12.0]
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def write_segmentation_folder(root: Path) -> OutputLayout:
    """Source images under ``root/source``, segmentation labels under ``root/out``."""
    layout = OutputLayout(root / "out")
    records, frames = [], []
    for image in IMAGES:
        path = root / "source" / image.name
        path.parent.mkdir(parents=True, exist_ok=True)
        width, height = image.size_wh
        Image.new("RGB", (width, height), (90, 120, 150)).save(path)
        record = ImageRecord(
            source_uri=str(path),
            relative_path=image.name,
            image_id=image.name,
            width=width,
            height=height,
        )
        masks = np.array([m for _, _, m in image.labels], dtype=bool).reshape(
            -1, height, width
        )
        detections = detections_of(
            xyxy=np.array([_box(m) for m in masks], dtype=np.float32).reshape(-1, 4),
            mask=masks,
            confidence=np.array([s for _, s, _ in image.labels], dtype=np.float32),
            class_id=np.array([c for c, _, _ in image.labels], dtype=int),
            class_names=[CLASS_NAMES[c] for c, _, _ in image.labels],
        )
        records.append(record)
        frames.append(detections_to_frame(detections, record, model="gsam", run_id="r"))
    write_shard(layout, "one", pd.concat(frames, ignore_index=True), records, "r")
    return layout


def expected_masks(name: str) -> list[tuple[int, np.ndarray]]:
    """(class id, mask) of an image's labels, in export order (score, highest first)."""
    image = next(i for i in IMAGES if i.name == name)
    return [(c, m) for c, _, m in sorted(image.labels, key=lambda x: -x[1])]


@pytest.fixture
def layout(tmp_path: Path) -> OutputLayout:
    return write_segmentation_folder(tmp_path)


def _coco_file(layout: OutputLayout, **options) -> Path:
    """The train COCO file of a fresh export (the only split by default)."""
    assert write_coco(layout, CLASS_NAMES, **options) == layout.coco_dir
    return coco_annotations_path(layout)


# A mask reaching past its detector box (SAM grew the object), and an empty mask.
BEYOND_BOX_WH = (40, 30)
BEYOND_BOX_XYXY = [10.0, 10.0, 20.0, 20.0]
BEYOND_BOX_MASK_XYXY = [2.0, 5.0, 36.0, 26.0]  # pixel edges of the mask below
EMPTY_MASK_XYXY = [1.0, 2.0, 9.0, 12.0]


def write_mask_beyond_box_folder(root: Path) -> OutputLayout:
    """One image ``m.png`` with a cat whose mask extends beyond its detector box and a
    dog with an empty mask (its box the detector's)."""
    width, height = BEYOND_BOX_WH
    path = root / "source" / "m.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (40, 60, 80)).save(path)
    masks = np.zeros((2, height, width), dtype=bool)
    masks[0, 5:26, 2:36] = True
    masks[0, 5:8, 2:5] = False  # not a rectangle: area is the pixel count
    record = ImageRecord(
        source_uri=str(path),
        relative_path="m.png",
        image_id="m",
        width=width,
        height=height,
    )
    detections = detections_of(
        xyxy=np.array([BEYOND_BOX_XYXY, EMPTY_MASK_XYXY], dtype=np.float32),
        mask=masks,
        confidence=np.array([0.9, 0.4], dtype=np.float32),
        class_id=np.array([0, 1]),
        class_names=["cat", "dog"],
    )
    layout = OutputLayout(root / "out")
    frame = detections_to_frame(detections, record, model="gsam", run_id="r")
    write_shard(layout, "one", frame, [record], "r")
    return layout


def test_coco_bbox_is_the_mask_extent_and_the_table_keeps_the_detector_box(
    tmp_path: Path,
) -> None:
    layout = write_mask_beyond_box_folder(tmp_path)

    coco = COCO(str(_coco_file(layout)))

    anns = sorted(coco.anns.values(), key=lambda a: -a["score"])
    assert len(anns) == 2
    beyond, empty = anns
    x, y, w, h = beyond["bbox"]
    assert [x, y, x + w, y + h] == BEYOND_BOX_MASK_XYXY
    assert beyond["area"] == 21 * 34 - 9  # the mask's pixels, not the box's
    x, y, w, h = empty["bbox"]
    assert [x, y, x + w, y + h] == EMPTY_MASK_XYXY  # the detector's box
    assert empty["area"] == 0
    table = read_labels(layout).sort_values("confidence", ascending=False)
    assert table[["x_min", "y_min", "x_max", "y_max"]].to_numpy().tolist() == [
        BEYOND_BOX_XYXY,
        EMPTY_MASK_XYXY,
    ]


@pytest.mark.parametrize("mask_format", ["rle", "polygon"])
def test_coco_masks_round_trip_through_pycocotools(layout, mask_format: str) -> None:
    path = _coco_file(layout, mask_format=mask_format)

    coco = COCO(str(path))

    assert len(coco.anns) == 5 and len(coco.imgs) == len(IMAGES)
    for image in coco.imgs.values():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        expected = expected_masks(image["file_name"])
        assert [a["category_id"] - 1 for a in anns] == [c for c, _ in expected]
        for ann, (_, mask) in zip(anns, expected, strict=True):
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
            assert ann["area"] == int(mask.sum())  # pixel count, not the box area
            assert ann["iscrowd"] == 0 and type(ann["iscrowd"]) is int
            x, y, w, h = ann["bbox"]
            assert [x, y, x + w, y + h] == _box(mask)


def test_rle_segmentations_are_the_stored_rle(layout) -> None:
    coco = json.loads(_coco_file(layout).read_text())
    stored = read_labels(layout).sort_values("confidence", ascending=False)

    segmentations = {
        (a["image_id"], a["score"]): a["segmentation"] for a in coco["annotations"]
    }

    assert all(isinstance(s, dict) for s in segmentations.values())
    assert sorted(
        json.dumps(s, separators=(",", ":")) for s in segmentations.values()
    ) == sorted(stored["mask"])


def test_polygons_keep_holes_and_parts_and_fall_back_to_rle_only_when_needed(
    layout,
) -> None:
    coco = json.loads(_coco_file(layout, mask_format="polygon").read_text())

    kinds = [type(a["segmentation"]).__name__ for a in coco["annotations"]]

    # Four non-empty masks as polygons; the empty mask has none, so it keeps its RLE.
    assert sorted(kinds) == ["dict", "list", "list", "list", "list"]
    by_area = {a["area"]: a["segmentation"] for a in coco["annotations"]}
    assert len(by_area[int(SHAPES["two parts"].sum())]) == 2  # one polygon per part
    assert len(by_area[int(SHAPES["hole"].sum())]) == 1  # the hole spliced in


def test_cocoeval_segm_of_the_file_against_itself_is_perfect(layout) -> None:
    coco_dict = json.loads(_coco_file(layout).read_text())
    # An empty mask matches nothing (IoU of two empty masks is 0): evaluate the others.
    coco_dict["annotations"] = [a for a in coco_dict["annotations"] if a["area"] > 0]
    ground_truth = COCO()
    ground_truth.dataset = copy.deepcopy(coco_dict)
    ground_truth.createIndex()
    detections = ground_truth.loadRes(copy.deepcopy(coco_dict["annotations"]))

    evaluation = COCOeval(ground_truth, detections, iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()

    assert evaluation.stats[0] == pytest.approx(1.0)


def test_supervision_reads_back_the_masks(layout) -> None:
    path = _coco_file(layout)

    dataset = sv.DetectionDataset.from_coco(
        images_directory_path=str(path.parent),
        annotations_path=str(path),
        force_masks=True,
    )

    assert dataset.classes == CLASS_NAMES
    assert sorted(Path(p).name for p in dataset.annotations) == sorted(
        image.name for image in IMAGES
    )  # every image, each checked below
    for image_path, detections in dataset.annotations.items():
        expected = expected_masks(Path(image_path).name)
        assert len(detections) == len(expected)
        if not expected:
            continue
        for mask, (_, expected_mask) in zip(detections.mask, expected, strict=True):
            np.testing.assert_array_equal(mask, expected_mask)
        assert detections.class_id.tolist() == [c for c, _ in expected]


def test_detection_tables_still_export_without_segmentation(tmp_path: Path) -> None:
    images, labels = export_folders.small_tables(tmp_path)

    coco = labels_to_coco(
        images, labels, export_folders.CLASS_NAMES, mask_format="polygon"
    )

    assert coco["annotations"] and all(
        "segmentation" not in a for a in coco["annotations"]
    )


def test_yolo_writes_one_polygon_line_per_label(layout) -> None:
    data_yaml = write_yolo(layout, CLASS_NAMES)

    lines = {  # every split folder's labels (train/, valid/)
        path.stem: path.read_text().splitlines()
        for path in data_yaml.parent.glob("*/labels/*.txt")
    }

    assert {k: len(v) for k, v in lines.items()} == {"x": 2, "y": 3, "empty": 0}
    for line in lines["x"] + lines["y"]:
        values = line.split()
        assert len(values) >= 7 and len(values) % 2 == 1  # class + >= 3 points
        assert all(0.0 <= float(v) <= 1.0 for v in values[1:])
    # The empty mask is written as its box's rectangle (normalised, 6 decimals).
    assert lines["x"][1] == (
        "1 0.020000 0.050000 0.180000 0.050000 0.180000 0.300000 0.020000 0.300000"
    )


def test_supervision_reads_back_yolo_polygons_close_to_the_masks(layout) -> None:
    data_yaml = write_yolo(layout, CLASS_NAMES)

    annotations: dict[str, sv.Detections] = {}
    for split_dir in sorted(p for p in data_yaml.parent.iterdir() if p.is_dir()):
        dataset = sv.DetectionDataset.from_yolo(
            images_directory_path=str(split_dir / "images"),
            annotations_directory_path=str(split_dir / "labels"),
            data_yaml_path=str(data_yaml),
            force_masks=True,
        )
        annotations.update(dataset.annotations)

    assert sorted(Path(p).name for p in annotations) == sorted(
        image.name for image in IMAGES
    )
    compared = 0
    for image_path, detections in annotations.items():
        expected = expected_masks(Path(image_path).name)
        assert detections.class_id.tolist() == [c for c, _ in expected]
        if not expected:
            continue
        for mask, (_, expected_mask) in zip(detections.mask, expected, strict=True):
            if not expected_mask.any():
                continue
            # Lossy format: pixel-centre vertices and seams between parts.
            iou = (mask & expected_mask).sum() / (mask | expected_mask).sum()
            assert iou > 0.9
            assert mask[expected_mask].mean() > 0.95
            compared += 1
    assert compared == 4  # every non-empty mask of the fixture


def test_yolo_lines_of_a_detection_table_stay_boxes() -> None:
    labels = pd.DataFrame(
        {
            "class_id": [1],
            "x_min": [0.0],
            "y_min": [0.0],
            "x_max": [20.0],
            "y_max": [15.0],
            "mask": [None],
        }
    )

    assert labels_to_yolo_lines(labels, resolution_wh=(40, 30)) == [
        "1 0.250000 0.250000 0.500000 0.500000"
    ]


def test_masks_are_read_back_from_parquet_shards_exactly(layout) -> None:
    from tasks.labels import frame_to_detections

    labels = read_labels(layout)
    images = read_images(layout)

    for name in ("x.png", "y.png"):
        rows = labels[labels["source_uri"].str.endswith(name)].sort_values(
            "confidence", ascending=False
        )
        detections = frame_to_detections(rows)
        for mask, (_, expected) in zip(
            detections.mask, expected_masks(name), strict=True
        ):
            np.testing.assert_array_equal(mask, expected)
    assert len(images) == 3
