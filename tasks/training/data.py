"""Which images and labels a training run learns from, and in which split.

The label table (``OUT/labels/``, already cut at the run's thresholds) is the truth the
student learns; the image manifest (``OUT/images/``) says which images were readable.
What was labeled, and with which classes in which order, comes from the output folder
itself: its ``approved.json`` when a person approved the run, else the newest export of
the run (``coco/.../_annotations.coco.json`` for boxes, ``classification/labels.json``
for classes), whose class order is the ontology's.

Splits follow the output folder's exports: each image's split in
``OUT/export_names.parquet`` when it has a val split, else ``Splits().with_val()`` (10%
val by content hash, as the YOLO export). Test images are never trained on or used to
pick anything. Only metadata is held here; pixels are read from disk batch by batch
(``load_image``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from model_loaders.protocol import CLASSIFICATION_TASKS
from tasks.approval import ApprovalError, approved_path, load_approved
from tasks.export_coco import coco_annotations_path
from tasks.export_files import local_source
from tasks.images import DecodedImage, ImageRef, decode_image
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.splits import SplitError, SplitName, Splits

_BOX = ["x_min", "y_min", "x_max", "y_max"]


class TrainingDataError(ValueError):
    """An output folder that cannot be trained on; one line naming it and why."""


@dataclass(frozen=True)
class Example:
    """One training image: where it is and its labels (boxes in the upright frame,
    class ids into the class names; a classification example has one whole-image
    box)."""

    image_id: str
    source_uri: str
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]
    class_ids: tuple[int, ...]


@dataclass(frozen=True)
class TrainingData:
    """An output folder's labels, ready to train on."""

    out: str
    task: str  # "detect" (boxes, also of segment runs) or "classify"
    class_names: list[str]
    train: list[Example]
    val: list[Example]
    classes_from: str  # the file the task and class names were read from

    def load_image(self, example: Example) -> Image.Image:
        """The example's RGB pixels, EXIF orientation applied (the frame of its
        boxes), read now from its file (or the local copy of a remote image)."""
        path = local_source(example.source_uri, Path(self.out))
        decoded = decode_image(ImageRef(str(path), path.name))
        if not isinstance(decoded, DecodedImage):
            raise TrainingDataError(
                f"{example.source_uri}: cannot read it any more "
                f"({decoded.skipped_reason})"
            )
        return decoded.image


def read_training_data(out: str | Path, split: str | None = None) -> TrainingData:
    """The labels of ``out`` as train and val examples (see the module docstring).

    Raises:
        TrainingDataError: No labels, an unknown task or classes, multi-label
            classification, a bad ``split``, or an empty train or val split.
    """
    layout = OutputLayout(out)
    if not layout.root.is_dir():
        raise TrainingDataError(f"{out}: no such output folder")
    labels = read_labels(layout)
    if labels.empty:
        raise TrainingDataError(
            f"{layout.labels_dir}: no labels to train on (label first: "
            f"`autolabel label SOURCE --out {out} ...`)"
        )
    task, class_names, where = labeled_task(layout)
    if task == "classify-multi":
        raise TrainingDataError(
            f"{where}: multi-label classification (classify-multi) cannot be "
            "trained yet; label with --task classify"
        )
    splits = _splits_of(layout, split)
    images = read_images(layout)
    readable = images[images["skipped_reason"].isna()].drop_duplicates(
        ["image_id", "source_uri"]
    )
    examples: dict[SplitName, list[Example]] = {"train": [], "val": [], "test": []}
    groups = dict(list(labels.groupby(["image_id", "source_uri"], sort=False)))
    for row in readable.sort_values("relative_path").itertuples(index=False):
        rows = groups.get((row.image_id, row.source_uri), labels.iloc[0:0])
        if task == "classify":
            if rows.empty:
                continue  # no class above its threshold: not a training image
            rows = rows.sort_values("confidence", ascending=False).head(1)
        example = Example(
            image_id=str(row.image_id),
            source_uri=str(row.source_uri),
            width=int(row.width),
            height=int(row.height),
            boxes=tuple(tuple(map(float, box)) for box in rows[_BOX].to_numpy()),
            class_ids=tuple(int(c) for c in rows["class_id"]),
        )
        examples[splits(example.image_id)].append(example)
    for name in ("train", "val"):
        if not examples[name]:
            raise TrainingDataError(
                f"{out}: no {name} images to train on"
                + ("; give --split with a val share" if name == "val" else "")
            )
    kind = "classify" if task in CLASSIFICATION_TASKS else "detect"
    return TrainingData(
        str(out), kind, class_names, examples["train"], examples["val"], where
    )


def labeled_task(layout: OutputLayout) -> tuple[str, list[str], str]:
    """(task, class names in ontology order, the file they came from) of an output
    folder: its approved.json, else its newest detection or classification export.

    Raises:
        TrainingDataError: When none of those files is there or readable.
    """
    if approved_path(layout.root).is_file():
        try:
            settings = load_approved(layout.root).settings
        except ApprovalError as error:
            raise TrainingDataError(str(error)) from None
        path = approved_path(layout.root)
        return settings.model.task, settings.ontology.class_names, str(path)
    exports = [
        path
        for path in (coco_annotations_path(layout), layout.class_table_json)
        if path.is_file()
    ]
    if not exports:
        raise TrainingDataError(
            f"{layout.root}: cannot tell the classes: no approved.json, "
            f"{coco_annotations_path(layout).relative_to(layout.root)} or "
            f"{layout.class_table_json.relative_to(layout.root)} (label with "
            "`autolabel label`, which writes them)"
        )
    newest = max(exports, key=lambda path: path.stat().st_mtime_ns)
    try:
        data = json.loads(newest.read_text(encoding="utf-8"))
        if newest == layout.class_table_json:
            names = [str(name) for name in data["classes"]]
            multi = any(len(image["classes"]) > 1 for image in data["images"])
            return ("classify-multi" if multi else "classify"), names, str(newest)
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        return "detect", [str(c["name"]) for c in categories], str(newest)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TrainingDataError(f"{newest}: cannot be read: {error}") from None


def _splits_of(layout: OutputLayout, split: str | None):
    """The split of an image id: ``split`` parsed, else the export's (see the
    module docstring)."""
    if split is not None:
        try:
            splits = Splits.parse(split)
        except SplitError as error:
            raise TrainingDataError(str(error)) from None
        if splits.val <= 0.0:
            raise TrainingDataError(
                f"--split {split!r}: training needs a val split to measure each epoch"
            )
        return splits.split_of
    default = Splits().with_val()
    if layout.export_names.is_file():
        names = pd.read_parquet(layout.export_names, columns=["image_id", "split"])
        if (names["split"] == "val").any():
            known = dict(zip(names["image_id"], names["split"], strict=True))
            return lambda image_id: known.get(image_id) or default.split_of(image_id)
    return default.split_of
