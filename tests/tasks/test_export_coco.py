"""COCO export: the dict (golden file), the written folder in Roboflow's layout (one
folder per split), and independent readers: pycocotools, supervision, torchvision."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import supervision as sv
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.datasets import CocoDetection

from tasks import export_coco
from tasks.export_coco import (
    COCO_ANNOTATIONS,
    EXPORT_DATE,
    coco_annotations_path,
    labels_to_coco,
    write_coco,
)
from tasks.labels import read_images
from tasks.splits import Splits
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
# The fixture's relative paths by flat export name: a/x.jpg and b/x.jpg both stay.
RELATIVE_PATHS = {
    "a__x.jpg": "a/x.jpg",
    "b__x.jpg": "b/x.jpg",
    "empty.png": "empty.png",
    "rotated.jpg": "rotated.jpg",
}
HALVES = Splits(train=0.5, val=0.5)


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, dict]:
    layout = write_output_folder(tmp_path)
    assert write_coco(layout, CLASS_NAMES) == layout.coco_dir
    path = coco_annotations_path(layout)
    assert path == layout.coco_dir / "train" / "_annotations.coco.json"
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

    assert [image["file_name"] for image in coco["images"]] == list(RELATIVE_PATHS)
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

    coco.info()  # needs the top-level info
    assert coco.dataset["info"]["contributor"] == "autolabel"
    assert coco.dataset["licenses"] == [{"id": 1, "name": "Unknown", "url": ""}]
    assert len(coco.imgs) == 4
    assert len(coco.anns) == 4
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == CLASS_NAMES
    for image in coco.imgs.values():
        assert image["license"] == 1 and image["date_captured"] == EXPORT_DATE
        relative_path = RELATIVE_PATHS[image["file_name"]]
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
    relative = {
        RELATIVE_PATHS[Path(image_path).name]: image_path
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
    coco_dir = path.parent.parent

    files = sorted(p.relative_to(coco_dir).as_posix() for p in coco_dir.rglob("*"))

    assert files == [
        "train",
        "train/_annotations.coco.json",
        "train/a__x.jpg",
        "train/b__x.jpg",
        "train/empty.png",
        "train/rotated.jpg",
    ]
    assert SKIPPED not in json.dumps(coco_dict)
    assert len(coco_dict["images"]) == 4  # the readable images, each checked below
    for image in coco_dict["images"]:
        with Image.open(path.parent / image["file_name"]) as stored:
            assert stored.size == (image["width"], image["height"])


def test_torchvision_coco_detection_finds_every_image(
    exported: tuple[Path, dict],
) -> None:
    path, _ = exported

    dataset = CocoDetection(root=str(path.parent), annFile=str(path))

    assert len(dataset) == 4
    loaded = 0
    for index in range(len(dataset)):
        image, targets = dataset[index]
        entry = dataset.coco.imgs[dataset.ids[index]]
        assert image.size == (entry["width"], entry["height"])
        expected_xyxy, _ = expected_boxes(RELATIVE_PATHS[entry["file_name"]])
        assert len(targets) == len(expected_xyxy)
        loaded += 1
    assert loaded == 4


def test_each_image_is_in_exactly_one_split_with_its_own_boxes(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)
    manifest = read_images(layout).set_index("relative_path")

    write_coco(layout, CLASS_NAMES, HALVES)

    assert sorted(p.name for p in layout.coco_dir.iterdir()) == ["train", "valid"]
    found: dict[str, str] = {}
    for split in ("train", "val"):
        coco = COCO(str(coco_annotations_path(layout, split)))
        coco.info()
        for image in coco.imgs.values():
            relative_path = RELATIVE_PATHS[image["file_name"]]
            assert relative_path not in found  # in one split only
            found[relative_path] = split
            assert (
                coco_annotations_path(layout, split).parent / image["file_name"]
            ).is_file()
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            xywh = np.array([a["bbox"] for a in anns], dtype=float).reshape(-1, 4)
            class_id = np.array([a["category_id"] - 1 for a in anns], dtype=int)
            xyxy, class_id = sorted_boxes(sv.xywh_to_xyxy(xywh), class_id)
            expected_xyxy, expected_class_id = expected_boxes(relative_path)
            np.testing.assert_allclose(xyxy, expected_xyxy)
            np.testing.assert_array_equal(class_id, expected_class_id)
    assert sorted(found) == sorted(RELATIVE_PATHS.values())  # the union is all
    assert found == {
        path: HALVES.split_of(manifest.loc[path, "image_id"]) for path in found
    }
    assert sorted(set(found.values())) == ["train", "val"]  # both splits hold some


def test_supervision_opens_each_split_folder(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)
    write_coco(layout, CLASS_NAMES, HALVES)

    names: list[str] = []
    for split in ("train", "val"):
        path = coco_annotations_path(layout, split)
        dataset = sv.DetectionDataset.from_coco(
            images_directory_path=str(path.parent), annotations_path=str(path)
        )
        assert dataset.classes == CLASS_NAMES
        for image_path in dataset.image_paths:
            assert Path(image_path).parent == path.parent
            names.append(Path(image_path).name)

    assert sorted(names) == sorted(RELATIVE_PATHS)


def test_an_export_replaces_the_old_layout_and_stale_files(tmp_path: Path) -> None:
    layout = write_output_folder(tmp_path)
    old_json = layout.coco_dir / "annotations.json"
    old_image = layout.coco_dir / "images" / "a" / "x.jpg"
    stale = layout.coco_dir / "train" / "renamed.jpg"
    for path in (old_json, old_image, stale):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"old")

    write_coco(layout, CLASS_NAMES)

    assert not old_json.exists() and not old_image.exists() and not stale.exists()
    assert sorted(p.name for p in layout.coco_dir.iterdir()) == ["train"]
    assert [p.name for p in layout.root.iterdir() if p.name.startswith(".")] == []


def test_a_crash_keeps_the_previous_export_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = write_output_folder(tmp_path)
    write_coco(layout, CLASS_NAMES)
    before = {p: p.read_bytes() for p in layout.coco_dir.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(export_coco, "coco_entries", crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_coco(layout, CLASS_NAMES, HALVES)

    after = {p: p.read_bytes() for p in layout.coco_dir.rglob("*") if p.is_file()}
    assert after == before and len(before) == 5
    assert [p.name for p in layout.root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("splits", [None, HALVES])
def test_two_exports_of_one_folder_are_byte_identical(
    tmp_path: Path, splits: Splits | None
) -> None:
    layout = write_output_folder(tmp_path)
    copy_root = tmp_path / "copy"
    shutil.copytree(layout.root, copy_root)
    copied = type(layout)(copy_root)

    write_coco(layout, CLASS_NAMES, splits)
    write_coco(copied, CLASS_NAMES, splits)

    def files(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file()
        }

    first, second = files(layout.coco_dir), files(copied.coco_dir)
    assert first == second
    assert sum(name.endswith(COCO_ANNOTATIONS) for name in first) == len(
        (splits or Splits()).names
    )
    assert len(first) == 4 + len((splits or Splits()).names)
