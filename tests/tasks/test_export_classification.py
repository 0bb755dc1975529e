"""Classification exports: class folders, the CSV/JSON table, Roboflow's upload layout
(read back by the Roboflow SDK's own folder parser)."""

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
from PIL import Image
from prefect.cache_policies import NO_CACHE
from roboflow.util.folderparser import parsefolder

from tasks.export_classification import (
    export_class_folders_task,
    export_class_table_task,
    export_roboflow_classification_task,
    write_class_folders,
    write_class_table,
    write_roboflow_classification,
)
from tasks.labels import (
    IMAGE_SCHEMA,
    LABEL_SCHEMA,
    ImageRecord,
    OutputLayout,
    detections_to_frame,
    images_to_frame,
    write_parquet_atomically,
)

CLASS_NAMES = ["cat", "dog", "bird"]
SINGLE = {"a/x.jpg": [("cat", 0.91)], "b/x.jpg": [("dog", 0.62)], "c.png": []}
MULTI = {
    "a/x.jpg": [("cat", 0.91), ("bird", 0.55)],
    "b/x.jpg": [("dog", 0.62)],
    "c.png": [],
}


def write_classification_folder(
    root: Path, labels: dict[str, list[tuple[str, float]]]
) -> OutputLayout:
    """Source images under ``root/source`` and classification labels under ``root/out``
    (one row per image and class, the box the whole image), plus a skipped file."""
    layout = OutputLayout(root / "out")
    records, frames = [], []
    for index, (relative_path, classes) in enumerate(labels.items()):
        path = root / "source" / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16 + index, 12), (10 * index, 80, 120)).save(path)
        record = ImageRecord(
            source_uri=str(path),
            relative_path=relative_path,
            image_id=f"id-{index}",
            width=16 + index,
            height=12,
        )
        detections = sv.Detections(
            xyxy=np.tile([0, 0, record.width, record.height], (len(classes), 1)).astype(
                np.float32
            ),
            confidence=np.array([s for _, s in classes], dtype=np.float32),
            class_id=np.array([CLASS_NAMES.index(n) for n, _ in classes], dtype=int),
            data={
                "class_name": np.array([n for n, _ in classes], dtype=str),
                "prompt": np.array(
                    [f"a photo of a {n}" for n, _ in classes], dtype=str
                ),
            },
        )
        records.append(record)
        frames.append(detections_to_frame(detections, record, model="clip", run_id="r"))
    records.append(
        ImageRecord(
            source_uri=str(root / "source" / "broken.jpg"),
            relative_path="broken.jpg",
            skipped_reason="not an image",
        )
    )
    labels_path, images_path = layout.shard_paths("one")
    write_parquet_atomically(
        pd.concat(frames, ignore_index=True), labels_path, LABEL_SCHEMA
    )
    write_parquet_atomically(
        images_to_frame(records, run_id="r"), images_path, IMAGE_SCHEMA
    )
    return layout


def _files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
    )


def test_single_label_images_go_to_their_class_folder(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, SINGLE)

    root = write_class_folders(layout, CLASS_NAMES)

    # c.png has no class: left out (a folder of its own would read as a class).
    assert _files(root) == ["cat/a/x.jpg", "dog/b/x.jpg"]
    source = tmp_path / "source" / "a" / "x.jpg"
    assert os.stat(root / "cat/a/x.jpg").st_ino == os.stat(source).st_ino  # hard link


def test_class_folders_read_as_an_image_folder_dataset(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, SINGLE)
    root = write_class_folders(layout, CLASS_NAMES)

    dataset = sv.ClassificationDataset.from_folder_structure(str(root))

    assert sorted(dataset.classes) == ["cat", "dog"]


def test_a_rerun_moves_an_image_whose_class_changed(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, SINGLE)
    write_class_folders(layout, CLASS_NAMES)
    changed = write_classification_folder(
        tmp_path, {**SINGLE, "a/x.jpg": [("bird", 0.7)]}
    )

    root = write_class_folders(changed, CLASS_NAMES)

    assert _files(root) == ["bird/a/x.jpg", "dog/b/x.jpg"]
    assert not (root / "cat").exists()


def test_class_folders_refuse_multi_label_tables(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, MULTI)

    with pytest.raises(ValueError, match="single-label"):
        write_class_folders(layout, CLASS_NAMES)


@pytest.mark.parametrize("bad", ["a/b", "..", "back\\slash"])
def test_a_class_name_that_cannot_be_a_folder_is_refused(tmp_path: Path, bad: str):
    names = ["cat", bad, "bird"]
    layout = write_classification_folder(tmp_path, {"x.jpg": []})
    labels_path, _ = layout.shard_paths("one")
    labels = pd.read_parquet(labels_path)
    record = ImageRecord(
        str(tmp_path / "source" / "x.jpg"), "x.jpg", "id-0", width=16, height=12
    )
    row = sv.Detections(
        xyxy=np.array([[0, 0, 16, 12]], dtype=np.float32),
        confidence=np.array([0.9], dtype=np.float32),
        class_id=np.array([1]),
        data={"class_name": np.array([bad]), "prompt": np.array([bad])},
    )
    labels = pd.concat(
        [labels, detections_to_frame(row, record, model="m", run_id="r")]
    )
    write_parquet_atomically(labels, labels_path, LABEL_SCHEMA)

    with pytest.raises(ValueError, match="folder name"):
        write_class_folders(layout, names)


@pytest.mark.parametrize("labels", [SINGLE, MULTI], ids=["single", "multi"])
def test_table_lists_every_readable_image_with_classes_and_scores(
    tmp_path: Path, labels: dict
) -> None:
    layout = write_classification_folder(tmp_path, labels)

    csv_path = write_class_table(layout, CLASS_NAMES)

    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["image"] for r in rows] == ["a/x.jpg", "b/x.jpg", "c.png"]
    for row in rows:
        expected = labels[row["image"]]
        assert row["classes"] == ";".join(n for n, _ in expected)
        for name in CLASS_NAMES:
            score = dict(expected).get(name)
            if score is None:
                assert row[name] == ""
            else:
                assert float(row[name]) == pytest.approx(score, abs=1e-6)
    data = json.loads(layout.class_table_json.read_text())
    assert data["classes"] == CLASS_NAMES
    assert {
        image["image"]: [(c["name"], round(c["score"], 4)) for c in image["classes"]]
        for image in data["images"]
    } == labels


def test_multi_label_csv_text_is_exactly_this(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, MULTI)

    text = write_class_table(layout, CLASS_NAMES).read_text()

    assert text.splitlines()[0] == "image,classes,cat,dog,bird"
    assert text.splitlines()[1].startswith("a/x.jpg,cat;bird,0.9100000")
    assert text.splitlines()[3] == "c.png,,,,"


def test_roboflow_single_label_layout_is_read_as_classification(tmp_path: Path):
    layout = write_classification_folder(tmp_path, SINGLE)

    root = write_roboflow_classification(layout, CLASS_NAMES, multi_label=False)

    assert _files(root) == ["train/cat/a__x.jpg", "train/dog/b__x.jpg"]
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
    layout = write_classification_folder(tmp_path, MULTI)

    root = write_roboflow_classification(layout, CLASS_NAMES, multi_label=True)

    assert _files(root) == [
        "train/_classes.csv",
        "train/a__x.jpg",
        "train/b__x.jpg",
        "train/c.png",
    ]
    assert (root / "train/_classes.csv").read_text() == (
        "filename,cat,dog,bird\na__x.jpg,1,0,1\nb__x.jpg,0,1,0\nc.png,0,0,0\n"
    )
    parsed = parsefolder(str(root), is_classification=False)
    labels = {image["name"]: image["annotationfile"] for image in parsed["images"]}
    assert labels == {
        "a__x.jpg": {"type": "classification_multilabel", "labels": ["cat", "bird"]},
        "b__x.jpg": {"type": "classification_multilabel", "labels": ["dog"]},
        "c.png": {"type": "classification_multilabel", "labels": []},
    }


def test_roboflow_multi_label_refuses_a_comma_in_a_class_name(tmp_path: Path):
    layout = write_classification_folder(tmp_path, {"x.jpg": []})

    with pytest.raises(ValueError, match="_classes.csv"):
        write_roboflow_classification(
            layout, ["cat", "dog, big", "bird"], multi_label=True
        )


def test_roboflow_refuses_two_images_flattening_to_one_name(tmp_path: Path) -> None:
    layout = write_classification_folder(
        tmp_path, {"a/x.jpg": [("cat", 0.9)], "a__x.jpg": [("dog", 0.8)]}
    )

    with pytest.raises(ValueError, match="flatten"):
        write_roboflow_classification(layout, CLASS_NAMES, multi_label=False)


def test_prefect_tasks_wrap_the_exports_without_cache(tmp_path: Path) -> None:
    layout = write_classification_folder(tmp_path, SINGLE)

    assert export_class_table_task.fn(layout, CLASS_NAMES) == layout.class_table_csv
    assert export_class_folders_task.fn(layout, CLASS_NAMES) == layout.class_folders_dir
    assert (
        export_roboflow_classification_task.fn(layout, CLASS_NAMES, False)
        == layout.roboflow_classification_dir
    )
    for exported in (
        export_class_table_task,
        export_class_folders_task,
        export_roboflow_classification_task,
    ):
        assert exported.cache_policy is NO_CACHE
