"""Classification exports: class folders, an image -> classes table, Roboflow's layout.

The label table holds one row per (image, class) kept by the thresholds, its box the
whole image. Three exports read it, all under ``OUT/classification/``:
- ``folders/<split>/<class>/<flat name>`` with ``split`` in ``train``, ``val`` (and
  ``test`` when asked): Ultralytics' classification layout (it wants ``train/`` and
  ``val/``), which torchvision's ``ImageFolder`` reads per split. Single-label only.
  Every class of the ontology has a folder in every split, even an empty one, so the
  class indices readers derive are the same in every split and every run.
  ``ImageFolder`` (and Ultralytics) number classes by SORTED folder name, so those
  indices equal the ontology's class ids only when the names sort in ontology order;
  ``folders/classes.txt`` lists the classes in ontology order (line i = class id i)
  for the mapping. An empty class folder needs ``ImageFolder(...,
  allow_empty=True)``. Images the thresholds left unlabeled are in no folder (a folder
  of their own would read as one more class).
- ``labels.csv`` / ``labels.json``: every readable image with its classes and scores
  (single- or multi-label), unlabeled images with none, and a ``split`` column.
- ``roboflow/<folder>/...`` with ``train``, ``valid`` (and ``test``): Roboflow's
  classification export layout, which the Roboflow SDK 1.7.3 folder upload
  (``Workspace.upload_dataset``, ``roboflow.util.folderparser``) reads back:
  single-label ``<folder>/<class>/<image>`` (every class folder present), multi-label
  ``<folder>/<image>`` plus ``<folder>/_classes.csv``: the header
  ``filename,<class>,...`` (ontology order) and one row of 0/1 per image, matched by
  bare file name. Roboflow's own files put a space after each header comma; the SDK
  strips it, pandas does not (without ``skipinitialspace``), so we write none. It
  ignores .gif and .webp files, so those are left out, with a warning.

Splits: ``tasks.splits.Splits.with_val()`` of the given splits (default: train plus a
10% val), by content hash. File names are flat (``a/x.jpg`` -> ``a__x.jpg``, the rule
of ``tasks.export_names.flat_export_names``, shared with the YOLO export), recorded
with the split in ``OUT/export_names.parquet``. Image files are hard links (or
upright copies) as in the other exports. Each folder export is written into a
temporary sibling and swapped in at the end, so an image whose class or split
changed leaves no stale copy behind, and a crash leaves the previous export whole.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import textwrap
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.export_files import (
    local_source,
    materialize_image,
    swapped_in_folder,
    write_text_atomically,
)
from tasks.export_images import (
    ExportImage,
    images_to_export,
    iter_export_images,
    plan_export,
    write_plan_export_names,
)
from tasks.labels import OutputLayout
from tasks.splits import ROBOFLOW_FOLDERS, Splits

logger = logging.getLogger(__name__)
ROBOFLOW_MULTI_LABEL_CSV = "_classes.csv"
CLASSES_TXT = "classes.txt"  # in folders/: the classes in ontology order
_ROBOFLOW_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tiff", ".tif"}


@dataclass(frozen=True)
class ClassifiedImage:
    """One readable image and its classes, highest score first (maybe none)."""

    relative_path: str
    source_uri: str
    orientation: int
    classes: list[tuple[str, float]]
    export_path: str = ""  # its file name in folder exports (flat)
    image_id: str = ""  # the content hash: what its split follows from

    def __post_init__(self) -> None:
        if not self.export_path:
            object.__setattr__(self, "export_path", self.relative_path)


def labels_to_classified_images(
    images: pd.DataFrame, labels: pd.DataFrame, *, class_names: list[str]
) -> list[ClassifiedImage]:
    """Every readable image of the manifest with its classes, by relative path, each
    with its flat export name (``flat_export_names``).

    Raises:
        ValueError: For inconsistent tables (see ``images_to_export``) or an image with
            the same class twice.
    """
    return [
        classified_image(image)
        for image in images_to_export(
            images, labels, class_names=class_names, flatten=True
        )
    ]


def iter_classified_images(
    layout: OutputLayout, plan: pd.DataFrame, *, class_names: list[str]
) -> Iterator[ClassifiedImage]:
    """``labels_to_classified_images`` of an output folder, one chunk's labels at a
    time (``plan``: ``plan_export(layout, flatten=True)``)."""
    for image in iter_export_images(layout, plan, class_names=class_names):
        yield classified_image(image)


def classified_image(image: ExportImage) -> ClassifiedImage:
    """One exported image's classes, best first.

    Raises:
        ValueError: If the image has the same class twice.
    """
    names = image.labels["class_name"].astype(str).tolist()
    if len(set(names)) != len(names):
        raise ValueError(f"{image.relative_path} has a class twice: {names}")
    scores = image.labels["confidence"].astype(float).tolist()
    return ClassifiedImage(
        relative_path=image.relative_path,
        source_uri=image.source_uri,
        orientation=image.orientation,
        classes=list(zip(names, scores, strict=True)),
        export_path=image.export_path,
        image_id=image.image_id,
    )


def classified_images_to_csv(
    classified: Iterable[ClassifiedImage],
    *,
    class_names: list[str],
    splits: Splits | None = None,
) -> str:
    """CSV text: one row per image, the header ``image,classes,<class>,...``, then
    ``split`` when ``splits`` are given.

    ``classes`` joins the image's classes with ';', best first; each class column holds
    the class's score, empty where the image does not have the class.
    """
    return "".join(
        class_table_csv_lines(classified, class_names=class_names, splits=splits)
    )


def class_table_csv_lines(
    classified: Iterable[ClassifiedImage],
    *,
    class_names: list[str],
    splits: Splits | None = None,
) -> Iterator[str]:
    """``classified_images_to_csv`` line by line, for streaming to a file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def line(row: list[str]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(row)
        return buffer.getvalue()

    yield line(["image", "classes", *class_names, *(["split"] if splits else [])])
    for image in classified:
        scores = dict(image.classes)
        yield line(
            [
                image.relative_path,
                ";".join(name for name, _ in image.classes),
                *(repr(scores[name]) if name in scores else "" for name in class_names),
                *([splits.split_of(image.image_id)] if splits else []),
            ]
        )


def classified_images_to_json(
    classified: list[ClassifiedImage], *, class_names: list[str]
) -> dict:
    """A JSON-ready dict: class names, and every image with its classes and scores.

    ``{"classes": [...], "images": [{"image": path, "classes": [{"name": ...,
    "score": ...}, ...]}, ...]}``, classes best first.
    """
    return {
        "classes": list(class_names),
        "images": [
            {
                "image": image.relative_path,
                "classes": [
                    {"name": name, "score": score} for name, score in image.classes
                ],
            }
            for image in classified
        ],
    }


def class_table_json_chunks(
    classified: Iterable[ClassifiedImage],
    *,
    class_names: list[str],
    splits: Splits | None = None,
) -> Iterator[str]:
    """``json.dumps(classified_images_to_json(...), indent=1) + "\\n"`` piece by
    piece, with each image's ``split`` when ``splits`` are given: the same text,
    without holding every image."""
    head = json.dumps({"classes": list(class_names)}, indent=1)
    yield head[: -len("\n}")] + ',\n "images": ['
    count = 0
    for image in classified:
        entry = classified_images_to_json([image], class_names=class_names)["images"][0]
        if splits is not None:
            entry["split"] = splits.split_of(image.image_id)
        text = textwrap.indent(json.dumps(entry, indent=1), "  ")
        yield ("," if count else "") + "\n" + text
        count += 1
    yield ("\n ]" if count else "]") + "\n}\n"


def write_class_table(
    layout: OutputLayout, class_names: list[str], splits: Splits | None = None
) -> Path:
    """Write ``labels.csv`` and ``labels.json``; returns the CSV path.

    With ``splits``, the CSV has a last column ``split`` (train, val or test) and each
    JSON image a ``split`` key (pass the splits the folder exports used:
    ``splits.with_val()``). Streamed: one chunk's labels at a time, each file written
    under a temporary name and renamed.
    """
    plan = plan_export(layout, flatten=True)

    def classified() -> Iterator[ClassifiedImage]:
        return iter_classified_images(layout, plan, class_names=class_names)

    write_text_atomically(
        layout.class_table_json,
        class_table_json_chunks(classified(), class_names=class_names, splits=splits),
    )
    write_text_atomically(
        layout.class_table_csv,
        class_table_csv_lines(classified(), class_names=class_names, splits=splits),
    )
    return layout.class_table_csv


def write_class_folders(
    layout: OutputLayout, class_names: list[str], splits: Splits | None = None
) -> Path:
    """Place every labeled image under ``folders/<split>/<class>/``; returns
    ``folders/``.

    Splits are ``splits.with_val()`` (default ``Splits()``: train plus a 10% val).
    Every class has a folder in every split, and ``folders/classes.txt`` lists the
    classes in ontology order (see the module docstring on class indices). Also
    writes ``OUT/export_names.parquet``.

    Raises:
        ValueError: If an image has several classes (a multi-label table: use the CSV or
            Roboflow export), or a class name cannot be a folder name.
    """
    splits = (splits or Splits()).with_val()
    folders = [_folder_name(name) for name in class_names]
    plan = plan_export(layout, flatten=True)
    with swapped_in_folder(layout.class_folders_dir) as root:
        for split in splits.names:
            for folder in folders:
                (root / split / folder).mkdir(parents=True)
        for image in iter_classified_images(layout, plan, class_names=class_names):
            if len(image.classes) > 1:
                raise ValueError(
                    f"{image.relative_path} has {len(image.classes)} classes: class "
                    "folders hold single-label classifications only"
                )
            split = splits.split_of(image.image_id)
            if not (root / split).is_dir():
                for folder in folders:
                    (root / split / folder).mkdir(parents=True)
            if image.classes:
                _place(layout, image, root / split / image.classes[0][0])
        (root / CLASSES_TXT).write_text(
            "".join(f"{name}\n" for name in class_names), encoding="utf-8"
        )
    write_plan_export_names(layout, plan, splits)
    return layout.class_folders_dir


def write_roboflow_classification(
    layout: OutputLayout,
    class_names: list[str],
    *,
    multi_label: bool,
    splits: Splits | None = None,
) -> Path:
    """Write Roboflow's classification layout (``roboflow/train/``, ``valid/``,
    ``test/``); returns ``roboflow/``.

    Splits are ``splits.with_val()`` (default ``Splits()``: train plus a 10% val),
    each split's folder present even when empty. Also writes
    ``OUT/export_names.parquet``.

    Raises:
        ValueError: If a single-label table has an image with several classes, or a
            class name cannot be a folder name or CSV header (',' in it).
    """
    splits = (splits or Splits()).with_val()
    bad = [c for c in class_names if "," in c]
    if multi_label and bad:
        raise ValueError(f"class names with ',' break Roboflow's _classes.csv: {bad}")
    folders = [] if multi_label else [_folder_name(name) for name in class_names]
    plan = plan_export(layout, flatten=True)
    with (
        swapped_in_folder(layout.roboflow_classification_dir) as root,
        ExitStack() as files,
    ):
        csv_files: dict[str, TextIO] = {}

        def folder_of(split: str) -> Path:
            folder = root / ROBOFLOW_FOLDERS[split]
            if not folder.is_dir():
                folder.mkdir()
                for name in folders:
                    (folder / name).mkdir()
                if multi_label:
                    handle = (folder / ROBOFLOW_MULTI_LABEL_CSV).open(
                        "w", encoding="utf-8"
                    )
                    csv_files[split] = files.enter_context(handle)
                    csv_files[split].write(multi_label_csv([], class_names=class_names))
            return folder

        for split in splits.names:
            folder_of(split)
        for image in iter_classified_images(layout, plan, class_names=class_names):
            if not multi_label and len(image.classes) > 1:
                raise ValueError(
                    f"{image.relative_path} has {len(image.classes)} classes in a "
                    "single-label export"
                )
            if PurePosixPath(image.export_path).suffix.lower() not in (
                _ROBOFLOW_IMAGE_SUFFIXES
            ):
                logger.warning(
                    "Roboflow's folder upload skips %s: left out", image.export_path
                )
                continue
            split = splits.split_of(image.image_id)
            folder = folder_of(split)
            if multi_label:
                _place(layout, image, folder)
                csv_files[split].write(
                    multi_label_csv([image], class_names=class_names).split("\n", 1)[1]
                )
            elif image.classes:
                _place(layout, image, folder / image.classes[0][0])
    write_plan_export_names(layout, plan, splits)
    return layout.roboflow_classification_dir


def multi_label_csv(
    classified: list[ClassifiedImage], *, class_names: list[str]
) -> str:
    """Roboflow's ``_classes.csv``: ``filename,<class>,...`` and a row of 0/1 per image
    (``1`` where the image has the class), in the given order."""
    lines = [",".join(["filename", *class_names])]
    for image in classified:
        classes = {name for name, _ in image.classes}
        lines.append(
            ",".join(
                [
                    image.export_path,
                    *("1" if c in classes else "0" for c in class_names),
                ]
            )
        )
    return "\n".join(lines) + "\n"


def _folder_name(class_name: str) -> str:
    if (
        not class_name
        or class_name in {".", ".."}
        or any(c in class_name for c in "/\\\0")
    ):
        raise ValueError(f"class name {class_name!r} cannot be a folder name")
    return class_name


def _place(layout: OutputLayout, image: ClassifiedImage, folder: Path) -> None:
    materialize_image(
        local_source(image.source_uri, layout.root),
        folder / image.export_path,
        orientation=image.orientation,
    )


@task(name="export-class-table", cache_policy=NO_CACHE)
def export_class_table_task(
    layout: OutputLayout, class_names: list[str], splits: Splits | None = None
) -> Path:
    """Prefect task for ``write_class_table`` (no cache: its result is files)."""
    return write_class_table(layout, class_names, splits)


@task(name="export-class-folders", cache_policy=NO_CACHE)
def export_class_folders_task(
    layout: OutputLayout, class_names: list[str], splits: Splits | None = None
) -> Path:
    """Prefect task for ``write_class_folders`` (no cache: its result is files)."""
    return write_class_folders(layout, class_names, splits)


@task(name="export-roboflow-classification", cache_policy=NO_CACHE)
def export_roboflow_classification_task(
    layout: OutputLayout,
    class_names: list[str],
    multi_label: bool,
    splits: Splits | None = None,
) -> Path:
    """Prefect task for ``write_roboflow_classification`` (no cache: files on disk)."""
    return write_roboflow_classification(
        layout, class_names, multi_label=multi_label, splits=splits
    )
