"""Classification exports: class folders, an image -> classes table, Roboflow's layout.

The label table holds one row per (image, class) kept by the thresholds, its box the
whole image. Three exports read it, all under ``OUT/classification/``:
- ``folders/<class>/<relative path>``: one folder per class (single-label only), the
  layout torchvision's ``ImageFolder`` and most training scripts read. Images the
  thresholds left unlabeled are not in any folder (a folder of its own would read as one
  more class).
- ``labels.csv`` / ``labels.json``: every readable image with its classes and scores
  (single- or multi-label), unlabeled images with none.
- ``roboflow/train/...``: what the Roboflow SDK 1.7.3 folder upload
  (``Workspace.upload_dataset``, ``roboflow.util.folderparser``) reads as
  classification: single-label ``train/<class>/<image>`` (the class is the image's
  parent folder name); multi-label ``train/<image>`` plus ``train/_classes.csv``
  (``filename,<class>,...`` rows of 0/1, matched to images by bare file name). File
  names are flattened (``a/x.jpg`` -> ``a__x.jpg``) because the parser matches by bare
  name and reads only the parent folder; two images flattening to one name, and names
  over 200 bytes, get a short hash suffix (``export_images.unique_export_names``). Its
  split comes from the path ("valid", "train" or "test" anywhere in it), so an uploader
  should pass ``split="train"`` explicitly; it ignores .gif and .webp files.

Image files are hard links (or upright copies) as in the other exports, named as there
(the relative path, unless it clashes or is over 200 bytes); a rerun removes
files that an earlier export placed and this one does not (an image whose class
changed).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.export_images import (
    image_destination,
    images_to_export,
    local_source,
    materialize_image,
    unique_export_names,
    write_text_atomically,
)
from tasks.labels import OutputLayout, read_images, read_labels

logger = logging.getLogger(__name__)
ROBOFLOW_SPLIT = "train"
ROBOFLOW_MULTI_LABEL_CSV = "_classes.csv"
_ROBOFLOW_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tiff", ".tif"}


@dataclass(frozen=True)
class ClassifiedImage:
    """One readable image and its classes, highest score first (maybe none)."""

    relative_path: str
    source_uri: str
    orientation: int
    classes: list[tuple[str, float]]
    export_path: str = ""  # its path in folder exports; the relative path by default

    def __post_init__(self) -> None:
        if not self.export_path:
            object.__setattr__(self, "export_path", self.relative_path)


def labels_to_classified_images(
    images: pd.DataFrame, labels: pd.DataFrame, *, class_names: list[str]
) -> list[ClassifiedImage]:
    """Every readable image of the manifest with its classes, by relative path.

    Raises:
        ValueError: For inconsistent tables (see ``images_to_export``) or an image with
            the same class twice.
    """
    classified = []
    for image in images_to_export(images, labels, class_names=class_names):
        names = image.labels["class_name"].astype(str).tolist()
        if len(set(names)) != len(names):
            raise ValueError(f"{image.relative_path} has a class twice: {names}")
        scores = image.labels["confidence"].astype(float).tolist()
        classified.append(
            ClassifiedImage(
                relative_path=image.relative_path,
                source_uri=image.source_uri,
                orientation=image.orientation,
                classes=list(zip(names, scores, strict=True)),
                export_path=image.export_path,
            )
        )
    return classified


def classified_images_to_csv(
    classified: list[ClassifiedImage], *, class_names: list[str]
) -> str:
    """CSV text: one row per image, the header ``image,classes,<class>,...``.

    ``classes`` joins the image's classes with ';', best first; each class column holds
    the class's score, empty where the image does not have the class.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "classes", *class_names])
    for image in classified:
        scores = dict(image.classes)
        writer.writerow(
            [
                image.relative_path,
                ";".join(name for name, _ in image.classes),
                *(repr(scores[name]) if name in scores else "" for name in class_names),
            ]
        )
    return buffer.getvalue()


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


def write_class_table(layout: OutputLayout, class_names: list[str]) -> Path:
    """Write ``labels.csv`` and ``labels.json``; returns the CSV path."""
    classified = _classified(layout, class_names)
    write_text_atomically(
        layout.class_table_json,
        json.dumps(
            classified_images_to_json(classified, class_names=class_names), indent=1
        )
        + "\n",
    )
    write_text_atomically(
        layout.class_table_csv,
        classified_images_to_csv(classified, class_names=class_names),
    )
    return layout.class_table_csv


def write_class_folders(layout: OutputLayout, class_names: list[str]) -> Path:
    """Place every labeled image under ``folders/<class>/``; returns the folder.

    Raises:
        ValueError: If an image has several classes (a multi-label table: use the CSV or
            Roboflow export), or a class name cannot be a folder name.
    """
    root = layout.class_folders_dir
    placed: set[Path] = set()
    for image in _classified(layout, class_names):
        if len(image.classes) > 1:
            raise ValueError(
                f"{image.relative_path} has {len(image.classes)} classes: class "
                "folders hold single-label classifications only"
            )
        if not image.classes:
            continue
        folder = root / _folder_name(image.classes[0][0])
        destination = image_destination(folder, image.export_path)
        materialize_image(
            local_source(image.source_uri, layout.root),
            destination,
            orientation=image.orientation,
        )
        placed.add(destination)
    _remove_others(root, placed)
    return root


def write_roboflow_classification(
    layout: OutputLayout, class_names: list[str], *, multi_label: bool
) -> Path:
    """Write the Roboflow SDK's classification folder layout; returns its root.

    Raises:
        ValueError: If a single-label table has an image with several classes, or a
            class name cannot be a folder name or CSV header (',' in it).
    """
    root = layout.roboflow_classification_dir
    split = root / ROBOFLOW_SPLIT
    classified = _classified(layout, class_names)
    names = _flat_names(classified)
    placed: set[Path] = set()
    rows = []
    for image, name in zip(classified, names, strict=True):
        if PurePosixPath(name).suffix.lower() not in _ROBOFLOW_IMAGE_SUFFIXES:
            logger.warning("Roboflow's folder upload skips %s: left out", name)
            continue
        classes = [class_name for class_name, _ in image.classes]
        if multi_label:
            destination = split / name
            rows.append([name, *("1" if c in classes else "0" for c in class_names)])
        else:
            if len(classes) > 1:
                raise ValueError(
                    f"{image.relative_path} has {len(classes)} classes in a "
                    "single-label export"
                )
            if not classes:
                continue
            destination = split / _folder_name(classes[0]) / name
        materialize_image(
            local_source(image.source_uri, layout.root),
            destination,
            orientation=image.orientation,
        )
        placed.add(destination)
    if multi_label:
        bad = [c for c in class_names if "," in c]
        if bad:
            raise ValueError(
                f"class names with ',' break Roboflow's _classes.csv: {bad}"
            )
        table = split / ROBOFLOW_MULTI_LABEL_CSV
        lines = [",".join(["filename", *class_names])] + [",".join(r) for r in rows]
        write_text_atomically(table, "\n".join(lines) + "\n")
        placed.add(table)
    _remove_others(root, placed)
    return root


def _classified(layout: OutputLayout, class_names: list[str]) -> list[ClassifiedImage]:
    return labels_to_classified_images(
        read_images(layout), read_labels(layout), class_names=class_names
    )


def _folder_name(class_name: str) -> str:
    if (
        not class_name
        or class_name in {".", ".."}
        or any(c in class_name for c in "/\\\0")
    ):
        raise ValueError(f"class name {class_name!r} cannot be a folder name")
    return class_name


def _flat_names(classified: list[ClassifiedImage]) -> list[str]:
    """Bare file names (``a/x.jpg`` -> ``a__x.jpg``), unique and short enough."""
    names = [
        "__".join(PurePosixPath(image.relative_path).parts).replace(",", "_")
        for image in classified
    ]
    return unique_export_names(names, ids=[image.relative_path for image in classified])


def _remove_others(root: Path, keep: set[Path]) -> None:
    """Delete files under ``root`` this export did not write, then empty folders."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


@task(name="export-class-table", cache_policy=NO_CACHE)
def export_class_table_task(layout: OutputLayout, class_names: list[str]) -> Path:
    """Prefect task for ``write_class_table`` (no cache: its result is files)."""
    return write_class_table(layout, class_names)


@task(name="export-class-folders", cache_policy=NO_CACHE)
def export_class_folders_task(layout: OutputLayout, class_names: list[str]) -> Path:
    """Prefect task for ``write_class_folders`` (no cache: its result is files)."""
    return write_class_folders(layout, class_names)


@task(name="export-roboflow-classification", cache_policy=NO_CACHE)
def export_roboflow_classification_task(
    layout: OutputLayout, class_names: list[str], multi_label: bool
) -> Path:
    """Prefect task for ``write_roboflow_classification`` (no cache: files on disk)."""
    return write_roboflow_classification(layout, class_names, multi_label=multi_label)
