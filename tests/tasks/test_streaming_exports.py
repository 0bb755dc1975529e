"""Everything after labeling reads the label table chunk by chunk, and finds what a
read of the whole table finds: exports byte for byte, quality checks result for
result, even when a folder's images are spread over many chunks in no order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.export_classification import (
    classified_images_to_csv,
    classified_images_to_json,
    labels_to_classified_images,
    write_class_table,
)
from tasks.export_coco import coco_dict, write_coco
from tasks.export_images import images_to_export
from tasks.labels import (
    ImageRecord,
    OutputLayout,
    iter_label_shards,
    read_images,
    read_labels,
)
from tasks.quality import QualityRules, check_output_quality, run_quality_checks
from tasks.quality import task as quality_task
from tasks.splits import ROBOFLOW_FOLDERS, Splits
from tests.tasks.export_folders import detections_of, write_shard
from tests.tasks.test_quality import (
    CLASSES,
    PLANTED_BOXES,
    THRESHOLDS,
    clean_rows,
    table,
)

SHARDS = 7  # more than the chunks an export keeps in memory (4): some are read again
SPLITS = Splits(train=0.5, val=0.3, test=0.2)


def write_scattered_folder(
    root: Path, images: int = 30, *, classify: bool = False
) -> OutputLayout:
    """``images`` small PNGs whose relative-path order visits the chunks round-robin,
    each with 0-3 boxes (image 5 is unreadable); ``classify``: 0-2 distinct classes
    per image, as a classification run labels."""
    layout = OutputLayout(root / "out")
    rng = np.random.default_rng(7)
    shards: dict[str, tuple[list[ImageRecord], list[pd.DataFrame]]] = {}
    for index in range(images):
        relative = f"folder-{index % 3}/img-{index:03d}.png"
        path = root / "source" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (index * 8 % 256, 90, 30)).save(path)
        key = f"k{(index * 5) % SHARDS}"  # chunk keys out of path order
        record = ImageRecord(
            source_uri=str(path),
            relative_path=relative,
            image_id=f"id-{index:03d}",
            width=40,
            height=30,
            skipped_reason="cannot identify image file" if index == 5 else None,
        )
        records, frames = shards.setdefault(key, ([], []))
        records.append(record)
        boxes = 0 if index == 5 else int(rng.integers(0, 3 if classify else 4))
        xyxy = np.sort(rng.uniform(0, 30, size=(boxes, 2, 2)), axis=1).reshape(-1, 4)
        class_id = rng.integers(0, 2, size=boxes)
        if classify:
            class_id = rng.permutation(2)[:boxes]
        frames.append(
            _frame(
                detections_of(
                    xyxy=xyxy[:, [0, 2, 1, 3]],
                    confidence=rng.uniform(0.3, 1.0, size=boxes).round(3),
                    class_id=class_id,
                    class_names=[CLASSES[i] for i in class_id],
                ),
                record,
            )
        )
    for key, (records, frames) in shards.items():
        write_shard(layout, key, pd.concat(frames, ignore_index=True), records, "r")
    return layout


def _frame(detections, record: ImageRecord) -> pd.DataFrame:
    from tasks.labels import detections_to_frame

    return detections_to_frame(detections, record, model="m", run_id="r")


def test_shards_together_are_the_whole_table(tmp_path: Path) -> None:
    layout = write_scattered_folder(tmp_path)
    pairs = list(iter_label_shards(layout))

    assert len(pairs) == SHARDS
    labels = pd.concat([labels for labels, _ in pairs], ignore_index=True)
    images = pd.concat([images for _, images in pairs], ignore_index=True)
    pd.testing.assert_frame_equal(labels, read_labels(layout))
    pd.testing.assert_frame_equal(images, read_images(layout))
    for labels, images in pairs:  # each chunk's labels belong to its own images
        assert set(labels["image_id"]) <= set(images["image_id"])


def test_streamed_coco_files_equal_the_whole_table_dict(tmp_path: Path) -> None:
    layout = write_scattered_folder(tmp_path)
    write_coco(layout, CLASSES, SPLITS)

    exported = images_to_export(
        read_images(layout), read_labels(layout), class_names=CLASSES, flatten=True
    )
    groups = SPLITS.group(exported, image_id=lambda image: image.image_id)
    assert sum(len(members) for members in groups.values()) == 29
    annotations = 0
    for split, members in groups.items():
        expected = coco_dict(
            members, CLASSES, "rle", file_names=[m.export_path for m in members]
        )
        path = layout.coco_dir / ROBOFLOW_FOLDERS[split] / "_annotations.coco.json"
        written = path.read_text(encoding="utf-8")
        assert written == json.dumps(expected, separators=(",", ":"), allow_nan=False)
        annotations += len(expected["annotations"])
    assert annotations == len(read_labels(layout)) > 20


def test_streamed_class_table_equals_the_whole_table_rendering(tmp_path: Path) -> None:
    layout = write_scattered_folder(tmp_path, classify=True)
    splits = SPLITS.with_val()
    write_class_table(layout, CLASSES, splits)

    classified = labels_to_classified_images(
        read_images(layout), read_labels(layout), class_names=CLASSES
    )
    expected = classified_images_to_json(classified, class_names=CLASSES)
    for entry, image in zip(expected["images"], classified, strict=True):
        entry["split"] = splits.split_of(image.image_id)
    assert len(expected["images"]) == 29
    assert sum(len(image.classes) for image in classified) > 10
    written = layout.class_table_json.read_text(encoding="utf-8")
    assert written == json.dumps(expected, indent=1) + "\n"
    assert layout.class_table_csv.read_text(encoding="utf-8") == (
        classified_images_to_csv(classified, class_names=CLASSES, splits=splits)
    )


def _write_planted(out: Path, rows: list[dict], extra_images: list[str]) -> None:
    """Each image (and each of ``extra_images``, without labels) in a chunk of its
    own, so a check sees the table in many parts."""
    from tasks.labels import LABEL_COLUMNS

    frame = table(rows)[LABEL_COLUMNS]
    ids = sorted({*frame["image_id"], *extra_images})
    layout = OutputLayout(out)
    for number, image_id in enumerate(ids):
        record = ImageRecord(
            source_uri=f"/data/{image_id}.jpg",
            relative_path=f"{image_id}.jpg",
            image_id=image_id,
            width=100,
            height=80,
        )
        labels = frame[frame["image_id"] == image_id]
        write_shard(layout, f"{number:03d}", labels, [record], "run")


@pytest.mark.parametrize("max_unlabeled", [None, 0.3, 0.05])
def test_quality_in_parts_reports_what_the_whole_table_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_unlabeled: float | None
) -> None:
    rows = clean_rows() + [r for bad, _ in PLANTED_BOXES.values() for r in bad]
    unlabeled = ["zz-no-labels-1", "zz-no-labels-2"]  # together in the last part
    _write_planted(tmp_path, rows, unlabeled)
    rules = QualityRules(max_unlabeled_fraction=max_unlabeled)
    layout = OutputLayout(tmp_path)
    whole = run_quality_checks(
        read_labels(layout),
        read_images(layout),
        class_names=CLASSES,
        thresholds=THRESHOLDS,
        rules=rules,
    )
    monkeypatch.setattr(quality_task, "PART_ROWS", 3)
    parts = list(quality_task.table_parts(layout))

    streamed = check_output_quality(
        tmp_path, class_names=CLASSES, thresholds=THRESHOLDS, rules=rules
    )

    assert len(parts) > 5
    assert streamed.to_dict() == whole.to_dict()
    assert len(streamed.failed) >= 8  # the planted rows, each check once
    assert streamed.unlabeled_image_ids == unlabeled
    # 2 of 20 readable images unlabeled: within 30%, not within 5% (None: none
    # allowed); the last part alone (all unlabeled) would fail with any limit.
    expected = {None: False, 0.3: True, 0.05: False}[max_unlabeled]
    assert streamed.check("images_have_labels").success is expected


@pytest.mark.parametrize(
    "paths",
    [
        ["a/x.jpg", "b/x.jpg", "part-1/img 2.JPG"],  # plain: Arrow's quick path
        ["a/X.jpg", "a__x.png"],  # clash by stem, case-insensitively
        ["x" * 250 + ".jpg", "y.jpg"],  # too long
        [".hidden.jpg", "a,b.jpg", "é.jpg", "a/./b.jpg"],  # not plain
    ],
)
def test_arrow_flat_names_are_the_flat_names(paths: list[str]) -> None:
    import pyarrow as pa

    from tasks.export_names import flat_export_names, flat_export_names_of

    paths = sorted(paths)
    names = flat_export_names_of(pa.array(paths)).to_pylist()
    assert names == flat_export_names(paths)
    assert len(set(names)) == len(paths)
