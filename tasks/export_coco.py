"""COCO detection and instance segmentation export, in Roboflow's COCO layout:
``coco/<split>/_annotations.coco.json`` beside that split's images (``train/``,
``valid/``, ``test/``), with bare file names.

That layout is what readers open as it is: supervision's ``from_coco``, torchvision's
``CocoDetection`` and FiftyOne take the split folder as the images folder and look each
``file_name`` up in it. Nested source folders are flattened by the one rule of every
flat export (``export_names.flat_export_names``: ``a/x.jpg`` -> ``a__x.jpg``, unique
by stem across the whole export, long names hashed), so an image has the same name
in COCO, VOC and YOLO whatever its split. Each image's split follows from its content
hash (``tasks.splits``). The whole ``coco/`` folder is written into a temporary
sibling and swapped in at the end (``export_files.swapped_in_folder``): files of an
earlier export (a renamed image, the ``annotations.json`` + ``images/`` layout of
older versions) disappear, and a crash never leaves half an export.

We write the file ourselves instead of through ``supervision.DetectionDataset.as_coco``,
which re-encodes every image with cv2; here images are hard-linked (or upright copies),
see ``tasks.export_files``.

Top-level ``info`` and ``licenses`` are there because ``pycocotools.COCO.info()`` and
several importers require them. Dates (``info.date_created``, each image's
``date_captured``) are the fixed ``EXPORT_DATE``: nothing in the label table records a
time, and a clock or file mtime would make two exports of the same folder differ; the
real capture time, if any, is in each image's EXIF.

Labels with a mask also get ``segmentation``, with ``area`` the mask's pixel count and
``iscrowd`` 0. By default the segmentation is the stored COCO RLE itself (lossless; COCO
allows RLE on any annotation and pycocotools, supervision and detectron2 read it). With
``mask_format="polygon"`` it is polygons traced on pixel edges, which reproduce the mask
exactly, holes and separate parts included; the rare mask that polygons cannot reproduce
exactly keeps its RLE, so no export ever loses pixels. The ``bbox`` of a label with a
mask is the mask's tight box (FiftyOne crops a mask to its bbox; the detector's box
stays in the label table). An empty mask keeps the detector's box: a zero-size box is
dropped or rejected by training loaders, and the detector's box is the only place the
model pointed at, so the annotation still counts as the label table's row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import supervision as sv
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.export_files import (
    image_destination,
    local_source,
    materialize_image,
    swapped_in_folder,
)
from tasks.export_images import ExportImage, images_to_export
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.masks import mask_to_coco_polygons, rle_area, rle_to_mask, rle_to_xyxy
from tasks.splits import ROBOFLOW_FOLDERS, SplitName, Splits

_XYXY = ["x_min", "y_min", "x_max", "y_max"]
MaskFormat = Literal["rle", "polygon"]
COCO_ANNOTATIONS = "_annotations.coco.json"  # Roboflow's name, beside the images
EXPORT_DATE = "1970-01-01T00:00:00+00:00"  # fixed: see the module docstring
LICENSE = {"id": 1, "name": "Unknown", "url": ""}


def coco_annotations_path(layout: OutputLayout, split: SplitName = "train") -> Path:
    """Where ``write_coco`` puts the annotations file of ``split``."""
    return layout.coco_dir / ROBOFLOW_FOLDERS[split] / COCO_ANNOTATIONS


def labels_to_coco(
    images: pd.DataFrame,
    labels: pd.DataFrame,
    class_names: list[str],
    *,
    mask_format: MaskFormat = "rle",
) -> dict:
    """A COCO detection dict for the whole label table (all splits in one).

    Image ids count from 1 in relative-path order and category ids are ``class_id + 1``
    (COCO ids start at 1; tools such as CVAT require it). Every readable image is
    listed, with or without boxes, because an image without boxes is a true negative
    for training and evaluation; skipped images are left out. Each annotation keeps
    the model's ``score``, so the file also serves as a detection result for
    ``COCOeval``. ``file_name`` is the flat export name
    (``export_names.flat_export_names``).

    Args:
        images: The image manifest (``tasks.labels.read_images``).
        labels: The label table (``tasks.labels.read_labels``).
        class_names: Class names in ``class_id`` order.
        mask_format: ``rle`` or ``polygon`` segmentations for labels with a mask.

    Returns:
        A dict with ``info``, ``licenses``, ``images``, ``annotations`` and
        ``categories``, ready for ``json.dump``.
    """
    exported = images_to_export(images, labels, class_names=class_names, flatten=True)
    return coco_dict(
        exported,
        class_names,
        mask_format,
        file_names=[image.export_path for image in exported],
    )


def write_coco(
    layout: OutputLayout,
    class_names: list[str],
    splits: Splits | None = None,
    *,
    mask_format: MaskFormat = "rle",
) -> Path:
    """Export the output folder's labels as COCO in Roboflow's layout; returns
    ``layout.coco_dir``.

    One folder per split of ``splits.names`` (``train/``, ``valid/``, ``test/``; an
    empty split still gets its folder and file), each holding its images and
    ``_annotations.coco.json``. ``splits`` None: everything in train.
    """
    split_of = split_export(layout, class_names, splits)
    with swapped_in_folder(layout.coco_dir) as folder:
        for split, members in split_of.items():
            split_dir = folder / ROBOFLOW_FOLDERS[split]
            split_dir.mkdir(parents=True)
            place_images(layout, split_dir, members)
            coco = coco_dict(
                members,
                class_names,
                mask_format,
                file_names=[image.export_path for image in members],
            )
            (split_dir / COCO_ANNOTATIONS).write_text(
                json.dumps(coco, separators=(",", ":"), allow_nan=False),
                encoding="utf-8",
            )
    return layout.coco_dir


def split_export(
    layout: OutputLayout, class_names: list[str], splits: Splits | None
) -> dict[SplitName, list[ExportImage]]:
    """The images to export (flat names: ``ExportImage.export_path``), by split of
    ``splits`` (None: all in train); an image's split follows from its content hash."""
    exported = images_to_export(
        read_images(layout), read_labels(layout), class_names=class_names, flatten=True
    )
    return (splits or Splits()).group(exported, image_id=lambda image: image.image_id)


def place_images(
    layout: OutputLayout, folder: Path, images: Sequence[ExportImage]
) -> None:
    """Hard-link (or copy upright) each image into ``folder`` under its flat name."""
    for image in images:
        materialize_image(
            local_source(image.source_uri, layout.root),
            image_destination(folder, image.export_path),
            orientation=image.orientation,
        )


def export_xyxy(labels: pd.DataFrame) -> np.ndarray:
    """Each label's box in an export: the mask's tight box for a non-empty mask
    (see the module docstring), else the label's own box."""
    xyxy = labels[_XYXY].to_numpy(dtype=np.float64, copy=True).reshape(-1, 4)
    for row, mask in enumerate(_mask_texts(labels)):
        if mask is not None:
            rle = json.loads(mask)
            if rle_area(rle) > 0:
                xyxy[row] = rle_to_xyxy(rle)
    return xyxy


def coco_dict(
    exported: Sequence[ExportImage],
    class_names: list[str],
    mask_format: MaskFormat,
    *,
    file_names: Sequence[str],
) -> dict:
    """The COCO dict of ``exported`` images (``file_names``: each one's file name)."""
    coco_images: list[dict] = []
    annotations: list[dict] = []
    for image_id, (image, name) in enumerate(
        zip(exported, file_names, strict=True), start=1
    ):
        coco_images.append(
            {
                "id": image_id,
                "license": LICENSE["id"],
                "file_name": name,
                "width": image.width,
                "height": image.height,
                "date_captured": EXPORT_DATE,
            }
        )
        xywh = sv.xyxy_to_xywh(export_xyxy(image.labels))
        class_ids = image.labels["class_id"].to_numpy(dtype=int)
        scores = image.labels["confidence"].to_numpy(dtype=np.float64)
        masks = _mask_texts(image.labels)
        for (x, y, w, h), class_id, score, mask in zip(
            xywh.tolist(), class_ids.tolist(), scores.tolist(), masks, strict=True
        ):
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": class_id + 1,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "score": score,
            }
            if mask is not None:
                rle = json.loads(mask)
                annotation["segmentation"] = _segmentation(rle, mask_format)
                annotation["area"] = rle_area(rle)
            annotations.append(annotation)
    categories = [
        {"id": class_id + 1, "name": name, "supercategory": "none"}
        for class_id, name in enumerate(class_names)
    ]
    return {
        "info": {
            "description": "Labeled by autolabel",
            "version": "1.0",
            "year": int(EXPORT_DATE[:4]),
            "contributor": "autolabel",
            "url": "",
            "date_created": EXPORT_DATE,
        },
        "licenses": [dict(LICENSE)],
        "images": coco_images,
        "annotations": annotations,
        "categories": categories,
    }


def _mask_texts(labels: pd.DataFrame) -> list[str | None]:
    if "mask" not in labels.columns:
        return [None] * len(labels)
    return [text if isinstance(text, str) else None for text in labels["mask"]]


def _segmentation(rle: dict, mask_format: MaskFormat) -> dict | list[list[float]]:
    if mask_format == "polygon":
        polygons = mask_to_coco_polygons(rle_to_mask(rle))
        if polygons:  # None: not exact as polygons; []: empty mask (no polygon at all)
            return polygons
    return {"size": rle["size"], "counts": rle["counts"]}


@task(name="export-coco", cache_policy=NO_CACHE)
def export_coco_task(
    layout: OutputLayout,
    class_names: list[str],
    splits: Splits | None = None,
    mask_format: MaskFormat = "rle",
) -> Path:
    """Prefect task for ``write_coco`` (no cache: its result is files on disk)."""
    return write_coco(layout, class_names, splits, mask_format=mask_format)
