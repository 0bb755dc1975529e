"""Reading human labels (COCO, YOLO flat and split) and bad truth as one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.truth import TruthError, parse_map_options, read_truth
from tests.tasks.truth_folders import coco_truth, content_id, write_image, write_out

NAMES = ["cat", "dog"]
# image (w, h), YOLO lines, expected absolute xyxy per box
BOXES = {
    "one.png": (
        (100, 50),
        ["0 0.5 0.5 0.2 0.4", "1 0.1 0.1 0.2 0.2"],
        [("cat", (40, 15, 60, 35)), ("dog", (0, 0, 20, 10))],
    ),
    "two.png": (
        (40, 40),
        ["1 0.95 0.5 0.2 0.5"],  # reaches outside: clipped
        [("dog", (34, 10, 40, 30))],
    ),
}


def _yolo(root: Path, layout: str) -> Path:
    for n, (name, ((w, h), lines, _)) in enumerate(BOXES.items()):
        split = ["train", "valid"][n] + "/" if layout == "split" else ""
        write_image(root / f"{split}images/{name}", (w, h), (n * 50, 10, 10))
        label = root / f"{split}labels/{Path(name).with_suffix('.txt')}"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("names: [cat, dog]\nnc: 2\n")
    return root


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_yolo_boxes_are_absolute_and_hashed(tmp_path: Path, layout: str):
    truth = read_truth(_yolo(tmp_path / "yolo", layout))
    assert truth.class_names == NAMES
    assert [image.path for image in truth.images] == list(BOXES)
    assert truth.clipped == 1
    assert len(truth.boxes) == 3
    for index, (name, (size, _, expected)) in enumerate(BOXES.items()):
        image = truth.images[index]
        assert (image.width, image.height) == size
        folder = (
            tmp_path / "yolo" / (["train", "valid"][index] if layout == "split" else "")
        )
        assert image.content_id == content_id(folder / "images" / name)
        rows = truth.boxes[truth.boxes["truth_image"] == index]
        assert len(rows) == len(expected)
        for row, (class_name, xyxy) in zip(rows.itertuples(), expected, strict=True):
            assert row.class_name == class_name
            assert (row.x_min, row.y_min, row.x_max, row.y_max) == pytest.approx(xyxy)


def test_yolo_polygons_become_boxes_and_masks(tmp_path: Path):
    root = tmp_path / "yolo"
    write_image(root / "images/p.png", (10, 10), (1, 2, 3))
    (root / "labels").mkdir()
    (root / "labels/p.txt").write_text("0 0.2 0.2 0.6 0.2 0.6 0.8 0.2 0.8\n")
    (root / "data.yaml").write_text("names: {0: cat}\n")
    truth = read_truth(root / "data.yaml")
    row = truth.boxes.iloc[0]
    assert (row.x_min, row.y_min, row.x_max, row.y_max) == pytest.approx((2, 2, 6, 8))
    assert row["mask"].startswith('{"size":[10,10]')


def test_coco_reads_every_box_and_hashes_files_beside_it(tmp_path: Path):
    write_out(tmp_path)
    path, data = coco_truth(tmp_path)
    truth = read_truth(path)
    assert truth.class_names == ["cat", "dog", "bird"]
    assert len(truth.images) == len(data["images"]) == 4
    assert len(truth.boxes) == len(data["annotations"]) == 9
    assert truth.images[0].content_id == content_id(tmp_path / "source" / "a.png")
    assert [image.content_id for image in truth.images[1:]] == [None, None, None]
    assert truth.clipped == 1


def test_a_folder_of_split_coco_files_is_one_truth(tmp_path: Path):
    write_out(tmp_path)
    path, _ = coco_truth(tmp_path)
    export = tmp_path / "export"
    for split in ("train", "valid"):
        (export / split).mkdir(parents=True)
        shutil.copy(path, export / split / "_annotations.coco.json")
    truth = read_truth(export)
    assert len(truth.images) == 8
    assert truth.images[4].path == "valid/copy-of-a.png"
    assert truth.class_names == ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    "name, text, reason",
    [
        ("t.json", '{"images": [', "malformed JSON: Expecting value at line 1"),
        ("t.json", "[1]", "not a COCO file (the top level is not an object)"),
        ("t.json", '{"images": []}', "not a COCO detection file (missing key"),
        ("data.yaml", "names: [cat\n", "malformed YAML"),
        ("data.yaml", "nc: 1\n", "no class 'names' list"),
    ],
)
def test_bad_truth_is_one_line_naming_the_file(
    tmp_path: Path, name: str, text: str, reason: str
):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TruthError) as error:
        read_truth(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {reason}")
    assert "\n" not in message


@pytest.mark.parametrize(
    "line, reason",
    [
        ("0 0.5 0.5 0.2", "3 numbers after the class"),
        ("x 1 1 1 1", "not 'class"),
        ("7 .5 .5 .1 .1", "class 7"),
    ],
)
def test_a_bad_yolo_line_names_file_and_line(tmp_path: Path, line: str, reason: str):
    root = tmp_path / "yolo"
    write_image(root / "images/p.png", (10, 10), (1, 2, 3))
    (root / "labels").mkdir()
    (root / "labels/p.txt").write_text(f"0 .5 .5 .1 .1\n{line}\n")
    (root / "data.yaml").write_text("names: [cat]\n")
    with pytest.raises(TruthError, match=rf"labels/p.txt:2: .*{reason}"):
        read_truth(root)


@pytest.mark.parametrize(
    "path, reason",
    [
        ("roboflow://ws/proj", "expected roboflow://WORKSPACE/PROJECT/VERSION"),
        ("roboflow://ws/proj/v2", "expected roboflow://WORKSPACE/PROJECT/VERSION"),
        ("missing.json", "no such file or folder"),
    ],
)
def test_unsupported_or_missing_truth(tmp_path: Path, path: str, reason: str):
    with pytest.raises(TruthError, match=reason):
        read_truth(path if "://" in path else tmp_path / path)


def test_an_empty_folder_is_no_truth(tmp_path: Path):
    with pytest.raises(TruthError, match="no data.yaml"):
        read_truth(tmp_path)


@pytest.mark.parametrize(
    "options, expected",
    [([], {}), (["kitty=cat", " pup = dog "], {"kitty": "cat", "pup": "dog"})],
)
def test_map_options(options, expected):
    assert parse_map_options(options) == expected


@pytest.mark.parametrize("option", ["kitty", "=cat", "kitty="])
def test_bad_map_options(option: str):
    from tasks.truth import MapError

    with pytest.raises(MapError, match="THEIR_CLASS=OUR_CLASS"):
        parse_map_options([option])


def test_boxes_outside_their_image_are_clipped_or_dropped_and_counted(tmp_path: Path):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [15, 5, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 20, 5, 5]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [-9, -9, 4, 4]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [2, 2, 3, 3]},
        ],
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    truth = read_truth(path)
    assert (truth.clipped, truth.outside) == (1, 2)
    boxes = truth.boxes[["x_min", "y_min", "x_max", "y_max"]].to_numpy().tolist()
    assert boxes == [[15, 5, 20, 10], [2, 2, 5, 5]]


@pytest.mark.parametrize(
    "annotation, reason",
    [
        ({"bbox": [1, 1, "NaN", 2]}, "box [1.0, 1.0, nan, 3.0] is not finite"),
        ({"bbox": [1, 1, 2]}, "ValueError"),
        ({"bbox": [1, 1, 2, 2], "image_id": 7}, "annotation 1: image_id 7 is not in"),
        ({"bbox": [1, 1, 2, 2], "category_id": 9}, "1: category_id 9 is not in the"),
    ],
)
def test_a_bad_coco_annotation_is_one_line(tmp_path: Path, annotation, reason):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, **annotation}],
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TruthError) as error:
        read_truth(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a COCO detection file")
    assert reason in message and "\n" not in message
