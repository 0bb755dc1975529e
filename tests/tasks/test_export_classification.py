"""Classification exports: class folders per split (read by torchvision's ImageFolder
and supervision), the CSV/JSON table, Roboflow's layout (read back by the Roboflow
SDK's own folder parser and pandas), splits and determinism."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import supervision as sv
from roboflow.util.folderparser import parsefolder
from torchvision.datasets import ImageFolder

from tasks.export_classification import (
    write_class_folders,
    write_class_table,
    write_roboflow_classification,
)
from tasks.labels import (
    LABEL_SCHEMA,
    ImageRecord,
    detections_to_frame,
    write_parquet_atomically,
)
from tasks.splits import Splits
from tests.tasks.export_folders import (
    CLASSIFICATION_NAMES,
    MULTI_LABEL,
    SINGLE_LABEL,
    detections_of,
    write_classification_folder,
)


def _files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
    )


def _dirs(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())


# Every class of the ontology has a folder in train/ and val/, even an empty one.
EVERY_CLASS_FOLDER = [
    f"{split}{folder}"
    for split in ("train", "val")
    for folder in ["", "/bird", "/cat", "/dog"]
]


def test_single_label_images_go_to_their_class_folder(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, SINGLE_LABEL)

    root = write_class_folders(layout, CLASSIFICATION_NAMES)

    # c.png has no class: left out (a folder of its own would read as a class). The
    # default splits put all three images in train (by their ids' hashes).
    assert root == layout.class_folders_dir
    assert _files(root) == ["classes.txt", "train/cat/a__x.jpg", "train/dog/b__x.jpg"]
    assert _dirs(root) == EVERY_CLASS_FOLDER
    assert (root / "classes.txt").read_text() == "cat\ndog\nbird\n"
    source = tmp_path / "source" / "a" / "x.jpg"
    assert os.stat(root / "train/cat/a__x.jpg").st_ino == os.stat(source).st_ino


def test_class_folders_follow_the_splits(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, SINGLE_LABEL)
    splits = Splits(train=0.5, val=0.5)

    root = write_class_folders(layout, CLASSIFICATION_NAMES, splits)

    # id-0 (a/x.jpg) hashes into val, id-1 (b/x.jpg) into train.
    assert [splits.split_of(f"id-{i}") for i in (0, 1)] == ["val", "train"]
    assert _files(root) == ["classes.txt", "train/dog/b__x.jpg", "val/cat/a__x.jpg"]
    assert _dirs(root) == EVERY_CLASS_FOLDER
    names = pd.read_parquet(layout.export_names)
    assert names[["relative_path", "split", "export_name"]].values.tolist() == [
        ["a/x.jpg", "val", "a__x.jpg"],
        ["b/x.jpg", "train", "b__x.jpg"],
        ["c.png", "train", "c.png"],
    ]


@pytest.mark.parametrize("split", ["train", "val"])
def test_image_folder_numbers_every_class_in_every_split(
    split: str, tmp_path: Path
) -> None:
    layout = write_classification_folder(tmp_path, SINGLE_LABEL)
    root = write_class_folders(layout, CLASSIFICATION_NAMES)

    # ImageFolder numbers sorted folder names: bird, cat, dog (not ontology order,
    # which classes.txt keeps). Empty class folders need allow_empty.
    dataset = ImageFolder(str(root / split), allow_empty=True)

    assert dataset.class_to_idx == {"bird": 0, "cat": 1, "dog": 2}
    expected = {"train": [("a__x.jpg", 1), ("b__x.jpg", 2)], "val": []}[split]
    assert [(Path(path).name, index) for path, index in dataset.samples] == expected


def test_class_folders_read_as_a_supervision_dataset(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, SINGLE_LABEL)
    root = write_class_folders(layout, CLASSIFICATION_NAMES)

    dataset = sv.ClassificationDataset.from_folder_structure(str(root / "train"))

    assert sorted(dataset.classes) == ["bird", "cat", "dog"]
    assert len(dataset) == 2


def test_a_rerun_moves_an_image_whose_class_changed(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, SINGLE_LABEL)
    write_class_folders(layout, CLASSIFICATION_NAMES)
    changed = write_classification_folder(
        tmp_path, {**SINGLE_LABEL, "a/x.jpg": [("bird", 0.7)]}
    )

    root = write_class_folders(changed, CLASSIFICATION_NAMES)

    assert _files(root) == ["classes.txt", "train/bird/a__x.jpg", "train/dog/b__x.jpg"]
    assert list((root / "train" / "cat").iterdir()) == []  # kept, empty


def test_the_old_flat_class_folders_are_gone(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, SINGLE_LABEL)
    old = layout.class_folders_dir / "cat" / "a" / "x.jpg"  # before issue 15
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")

    root = write_class_folders(layout, CLASSIFICATION_NAMES)

    assert _files(root) == ["classes.txt", "train/cat/a__x.jpg", "train/dog/b__x.jpg"]
    assert sorted(p.name for p in root.parent.iterdir()) == ["folders"]


def test_class_folders_refuse_multi_label_tables(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, MULTI_LABEL)

    with pytest.raises(ValueError, match="single-label"):
        write_class_folders(layout, CLASSIFICATION_NAMES)


@pytest.mark.parametrize("bad", ["a/b", "..", "back\\slash"])
def test_a_class_name_that_cannot_be_a_folder_is_refused(tmp_path: Path, bad: str):
    names = ["cat", bad, "bird"]
    layout = write_classification_folder(tmp_path, {"x.jpg": []})
    labels_path, _ = layout.shard_paths("one")
    labels = pd.read_parquet(labels_path)
    record = ImageRecord(
        str(tmp_path / "source" / "x.jpg"), "x.jpg", "id-0", width=16, height=12
    )
    row = detections_of(
        xyxy=np.array([[0, 0, 16, 12]], dtype=np.float32),
        confidence=np.array([0.9], dtype=np.float32),
        class_id=np.array([1]),
        class_names=[bad],
    )
    labels = pd.concat(
        [labels, detections_to_frame(row, record, model="m", run_id="r")]
    )
    write_parquet_atomically(labels, labels_path, LABEL_SCHEMA)

    with pytest.raises(ValueError, match="folder name"):
        write_class_folders(layout, names)


@pytest.mark.parametrize("labels", [SINGLE_LABEL, MULTI_LABEL], ids=["single", "multi"])
def test_table_lists_every_readable_image_with_classes_and_scores(
    tmp_path: Path, labels: dict
) -> None:
    layout = write_classification_folder(tmp_path, labels)

    csv_path = write_class_table(layout, CLASSIFICATION_NAMES)

    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["image"] for r in rows] == ["a/x.jpg", "b/x.jpg", "c.png"]
    for row in rows:
        expected = labels[row["image"]]
        assert row["classes"] == ";".join(n for n, _ in expected)
        for name in CLASSIFICATION_NAMES:
            score = dict(expected).get(name)
            if score is None:
                assert row[name] == ""
            else:
                assert float(row[name]) == pytest.approx(score, abs=1e-6)
    data = json.loads(layout.class_table_json.read_text())
    assert data["classes"] == CLASSIFICATION_NAMES
    assert {
        image["image"]: [(c["name"], round(c["score"], 4)) for c in image["classes"]]
        for image in data["images"]
    } == labels


def test_multi_label_csv_text_is_exactly_this(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, MULTI_LABEL)

    text = write_class_table(layout, CLASSIFICATION_NAMES).read_text()

    assert text.splitlines()[0] == "image,classes,cat,dog,bird"
    assert text.splitlines()[1].startswith("a/x.jpg,cat;bird,0.9100000")
    assert text.splitlines()[3] == "c.png,,,,"


def test_roboflow_single_label_layout_is_read_as_classification(tmp_path: Path):
    layout = write_classification_folder(tmp_path, SINGLE_LABEL)

    root = write_roboflow_classification(
        layout, CLASSIFICATION_NAMES, multi_label=False
    )

    assert _files(root) == ["train/cat/a__x.jpg", "train/dog/b__x.jpg"]
    assert _dirs(root) == [
        f"{split}{folder}"
        for split in ("train", "valid")
        for folder in ["", "/bird", "/cat", "/dog"]
    ]
    parsed = parsefolder(str(root), is_classification=True)
    found = {
        image["name"]: (image["split"], image["annotationfile"])
        for image in parsed["images"]
    }
    assert found == {
        "a__x.jpg": (
            "train",
            {"classification_label": "cat", "type": "classification_folder"},
        ),
        "b__x.jpg": (
            "train",
            {"classification_label": "dog", "type": "classification_folder"},
        ),
    }


def test_roboflow_multi_label_layout_is_read_as_multi_label(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, MULTI_LABEL)

    root = write_roboflow_classification(layout, CLASSIFICATION_NAMES, multi_label=True)

    assert _files(root) == [
        "train/_classes.csv",
        "train/a__x.jpg",
        "train/b__x.jpg",
        "train/c.png",
        "valid/_classes.csv",
    ]
    assert (root / "train/_classes.csv").read_text() == (
        "filename,cat,dog,bird\na__x.jpg,1,0,1\nb__x.jpg,0,1,0\nc.png,0,0,0\n"
    )
    assert (root / "valid/_classes.csv").read_text() == "filename,cat,dog,bird\n"
    parsed = parsefolder(str(root), is_classification=False)
    labels = {image["name"]: image["annotationfile"] for image in parsed["images"]}
    assert labels == {
        "a__x.jpg": {"type": "classification_multilabel", "labels": ["cat", "bird"]},
        "b__x.jpg": {"type": "classification_multilabel", "labels": ["dog"]},
        "c.png": {"type": "classification_multilabel", "labels": []},
    }


def test_roboflow_multi_label_csv_reads_as_one_hot_rows_in_each_split(
    tmp_path: Path,
) -> None:
    layout = write_classification_folder(tmp_path, MULTI_LABEL)
    splits = Splits(train=0.5, val=0.5)

    root = write_roboflow_classification(
        layout, CLASSIFICATION_NAMES, multi_label=True, splits=splits
    )

    relative_path_of = {"a__x.jpg": "a/x.jpg", "b__x.jpg": "b/x.jpg", "c.png": "c.png"}
    checked = 0
    for folder, expected_names in [
        ("train", ["b__x.jpg", "c.png"]),
        ("valid", ["a__x.jpg"]),
    ]:
        table = pd.read_csv(root / folder / "_classes.csv")
        assert list(table.columns) == ["filename", *CLASSIFICATION_NAMES]
        assert table["filename"].tolist() == expected_names
        for row in table.itertuples(index=False):
            classes = {name for name, _ in MULTI_LABEL[relative_path_of[row.filename]]}
            assert list(row[1:]) == [int(c in classes) for c in CLASSIFICATION_NAMES]
            assert (root / folder / row.filename).is_file()
            checked += 1
    assert checked == 3


def test_roboflow_multi_label_refuses_a_comma_in_a_class_name(tmp_path: Path):
    layout = write_classification_folder(tmp_path, {"x.jpg": []})

    with pytest.raises(ValueError, match="_classes.csv"):
        write_roboflow_classification(
            layout, ["cat", "dog, big", "bird"], multi_label=True
        )


def test_roboflow_renames_the_second_of_two_images_flattening_to_one_name(
    tmp_path: Path,
) -> None:
    # Changed with issue 14: this used to be refused (ValueError "flatten").
    layout = write_classification_folder(
        tmp_path, {"a/x.jpg": [("cat", 0.9)], "a__x.jpg": [("dog", 0.8)]}
    )

    root = write_roboflow_classification(
        layout, CLASSIFICATION_NAMES, multi_label=False
    )

    # "a/x.jpg" sorts first ('/' < '_') and keeps the flat name; "a__x.jpg" gets
    # the hash of its relative path.
    assert _files(root) == ["train/cat/a__x.jpg", "train/dog/a__x-9a1a255d.jpg"]


def test_class_table_records_each_image_split(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, SINGLE_LABEL)
    splits = Splits(train=0.5, val=0.5)

    csv_path = write_class_table(layout, CLASSIFICATION_NAMES, splits)

    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [(r["image"], r["split"]) for r in rows] == [
        ("a/x.jpg", "val"),
        ("b/x.jpg", "train"),
        ("c.png", "train"),
    ]
    data = json.loads(layout.class_table_json.read_text())
    assert [i["split"] for i in data["images"]] == ["val", "train", "train"]


@pytest.mark.parametrize(
    ("write", "labels"),
    [
        (
            lambda layout: write_class_folders(layout, CLASSIFICATION_NAMES),
            SINGLE_LABEL,
        ),
        (
            lambda layout: write_roboflow_classification(
                layout, CLASSIFICATION_NAMES, multi_label=False
            ),
            SINGLE_LABEL,
        ),
        (
            lambda layout: write_roboflow_classification(
                layout, CLASSIFICATION_NAMES, multi_label=True
            ),
            MULTI_LABEL,
        ),
    ],
    ids=["folders", "roboflow-single", "roboflow-multi"],
)
def test_two_exports_are_byte_identical(write, labels: dict, tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, labels)
    root = write(layout)
    first = {p: (root / p).read_bytes() for p in _files(root)}
    first_names = layout.export_names.read_bytes()

    write(layout)

    assert {p: (root / p).read_bytes() for p in _files(root)} == first
    assert len(first) >= 2
    assert layout.export_names.read_bytes() == first_names
