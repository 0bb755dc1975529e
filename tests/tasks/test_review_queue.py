"""The review queue: images ranked by the signs of a wrong label, worked out by hand,
written as queue.csv / review.md with thumbnails of the first ones."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.labels import ImageRecord, OutputLayout, detections_to_frame
from tasks.review_queue import (
    QUEUE_COLUMNS,
    image_review_reasons,
    read_queue_csv,
    write_review_queue,
)
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds
from tests.tasks.export_folders import detections_of, write_shard
from tests.tasks.mask_shapes import boxes_mask
from tests.tasks.truth_folders import content_id, write_image

CLASSES = ["cat", "dog"]
SIZE = (80, 60)
THRESHOLDS = Thresholds(default=0.35, per_class={"dog": 0.5})
HOSTILE = "*x*<b>|.png"
# chunk -> image -> labels (class, score, xyxy[, mask box]); None: a skipped image
SHARDS = {
    "one": {
        "ok.png": [("cat", 0.9, (10, 10, 40, 40), None)],
        # cat 0.07 above 0.35 (0.3 points); dog 0.55 is 0.05 above 0.5 (0.5 points)
        "near.png": [
            ("cat", 0.42, (10, 10, 40, 40), None),
            ("dog", 0.55, (50, 10, 70, 40), None),
        ],
        # a cat and a dog on one object (IoU 0.93): 1 point; the far cat is fine
        "overlap.png": [
            ("cat", 0.9, (10, 10, 50, 50), None),
            ("dog", 0.9, (11, 11, 50, 50), None),
            ("cat", 0.9, (60, 5, 75, 20), None),
        ],
        HOSTILE: [],  # no labels: 1 point
        "broken.png": None,
    },
    "two": {
        # a cat 0.01 above its threshold (0.9 points) overlapping a dog (1 point)
        "both.png": [
            ("cat", 0.36, (10, 10, 50, 50), None),
            ("dog", 0.8, (10, 10, 50, 52), None),
        ],
        # the first mask fills its box, the second is a speck in its corner: 1 point
        "mask.png": [
            ("cat", 0.9, (10, 10, 40, 40), (10, 10, 40, 40)),
            ("dog", 0.9, (45, 10, 75, 50), (45, 10, 48, 13)),
        ],
    },
}
# rank order: score descending, then path
EXPECTED = [
    ["1", "both.png", "1.9", "near_threshold;class_overlap", "2"],
    ["2", HOSTILE, "1", "no_labels", "0"],
    ["3", "mask.png", "1", "mask_off_box", "2"],
    ["4", "overlap.png", "1", "class_overlap", "3"],
    ["5", "near.png", "0.8", "near_threshold", "2"],
]


def _settings(task: str = "detect") -> LabelSettings:
    return LabelSettings(
        ontology=Ontology.from_class_options(CLASSES),
        thresholds=THRESHOLDS,
        model=ModelSpec(task=task),
    )


def write_queue_out(tmp_path: Path) -> Path:
    """Source images and an output folder of two shards holding ``SHARDS``."""
    source, out = tmp_path / "source", tmp_path / "out"
    for n, (key, images) in enumerate(SHARDS.items()):
        records, frames = [], []
        for m, (name, labels) in enumerate(images.items()):
            path = source / name
            write_image(path, SIZE, (20 * n + 40 * m, 90, 120))
            if labels is None:
                records.append(ImageRecord(str(path), name, skipped_reason="bad"))
                continue
            record = ImageRecord(
                str(path), name, content_id(path), width=SIZE[0], height=SIZE[1]
            )
            records.append(record)
            masks = [m for *_, m in labels]
            detections = detections_of(
                xyxy=np.array([b for _, _, b, _ in labels], float).reshape(-1, 4),
                confidence=np.array([s for _, s, _, _ in labels], float),
                class_id=np.array([CLASSES.index(c) for c, *_ in labels], int),
                class_names=[c for c, *_ in labels],
                mask=np.stack([boxes_mask(SIZE[1], SIZE[0], m) for m in masks])
                if labels and all(masks)
                else None,
            )
            frames.append(
                detections_to_frame(detections, record, model="m", run_id="r")
            )
        write_shard(OutputLayout(out), key, pd.concat(frames), records, "r")
    return out


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return write_queue_out(tmp_path)


def test_queue_csv_ranks_images_by_hand_counted_scores(out: Path):
    queue = write_review_queue(out, _settings(), top=2)
    with (out / "review" / "queue.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == QUEUE_COLUMNS
    assert rows[1:] == EXPECTED
    assert queue.images == 6  # the unreadable image is not looked at
    assert queue.counts == {
        "near_threshold": 2,
        "class_overlap": 2,
        "no_labels": 1,
        "mask_off_box": 1,
    }
    table = read_queue_csv(out / "review" / "queue.csv")
    assert table["image"].tolist() == [row[1] for row in EXPECTED]
    assert table["score"].tolist() == pytest.approx([1.9, 1, 1, 1, 0.8])


def test_thumbnails_of_the_top_images_show_their_labels(out: Path, tmp_path: Path):
    queue = write_review_queue(out, _settings(), top=2)
    folder = out / "review" / "thumbnails"
    drawn = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    assert drawn == sorted(["both.png.jpg", f"{HOSTILE}.jpg"])
    assert [e.thumbnail for e in queue.queued[:3]] == [
        "thumbnails/both.png.jpg",
        f"thumbnails/{HOSTILE}.jpg",
        "",
    ]
    with Image.open(folder / "both.png.jpg") as thumb:
        pixels = np.asarray(thumb.convert("RGB"), dtype=int)
    with Image.open(tmp_path / "source" / "both.png") as raw:
        plain = np.asarray(raw.convert("RGB"), dtype=int)
    assert pixels.shape == plain.shape
    assert np.abs(pixels - plain).max() > 100  # boxes drawn in
    # a rerun with fewer thumbnails leaves none of the old ones behind
    write_review_queue(out, _settings(), top=1)
    assert [p.name for p in folder.rglob("*.jpg")] == ["both.png.jpg"]


def test_review_md_lists_the_queue_with_user_text_escaped(out: Path):
    write_review_queue(out, _settings(), top=2)
    markdown = (out / "review" / "review.md").read_text()
    assert "<b>" not in markdown
    assert "| 2 | \\*x\\*&lt;b&gt;\\|.png | 1 | no\\_labels | 0 |" in markdown
    assert "![rank 1](<thumbnails/both.png.jpg>)" in markdown
    assert "queued: 5" in markdown


def test_classification_labels_never_count_as_overlapping():
    whole = (0.0, 0.0, 80.0, 60.0)
    labels = pd.DataFrame(
        [
            {"class_name": c, "confidence": 0.9, "mask": None}
            | dict(zip(["x_min", "y_min", "x_max", "y_max"], whole, strict=True))
            for c in CLASSES
        ]
    )
    thresholds = {"cat": 0.35, "dog": 0.5}
    assert image_review_reasons(labels, thresholds) == (1.0, ["class_overlap"])
    assert image_review_reasons(labels, thresholds, classification=True) == (0.0, [])


def test_an_output_without_shards_has_an_empty_queue(tmp_path: Path):
    queue = write_review_queue(tmp_path, _settings())
    assert queue.queued == [] and queue.images == 0
    assert (tmp_path / "review" / "queue.csv").read_text() == (
        ",".join(QUEUE_COLUMNS) + "\n"
    )
    assert "Nothing to review." in (tmp_path / "review" / "review.md").read_text()


@pytest.mark.usefixtures("prefect_harness")
def test_the_task_writes_the_queue_and_an_artifact_in_a_flow(out: Path):
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.review_queue import review_queue_task

    @flow
    def after_a_batch(out: str, settings: LabelSettings) -> int:
        return len(review_queue_task(out, settings).queued)

    assert after_a_batch(str(out), _settings()) == len(EXPECTED)
    assert (out / "review" / "queue.csv").is_file()
    artifact = Artifact.get("autolabel-review-queue")
    assert artifact is not None and "queued: 5" in artifact.data
