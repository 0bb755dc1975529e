"""COCO detection and instance segmentation export: ``coco/annotations.json`` beside
``coco/images/...``.

We write the file ourselves instead of through ``supervision.DetectionDataset.as_coco``:
that exporter re-encodes every image with cv2 and names files by their bare name, so
``a/x.jpg`` and ``b/x.jpg`` collide. Here ``file_name`` keeps the sub-folders and images
are hard-linked (or upright copies), see ``tasks.export_images``; a name that would
clash case-insensitively or is over 200 bytes gets a short hash suffix there.

Labels with a mask also get ``segmentation``, with ``area`` the mask's pixel count and
``iscrowd`` 0. By default the segmentation is the stored COCO RLE itself (lossless; COCO
allows RLE on any annotation and pycocotools, supervision and detectron2 read it). With
``mask_format="polygon"`` it is polygons traced on pixel edges, which reproduce the mask
exactly, holes and separate parts included; the rare mask that polygons cannot reproduce
exactly keeps its RLE, so no export ever loses pixels. The ``bbox`` stays the label's
box (Grounding DINO's, the prompt SAM was given), not the mask's tight box.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import supervision as sv
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.export_images import (
    ExportImage,
    image_destination,
    images_to_export,
    local_source,
    materialize_image,
    write_text_atomically,
)
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.masks import mask_to_coco_polygons, rle_area, rle_to_mask

_XYXY = ["x_min", "y_min", "x_max", "y_max"]
MaskFormat = Literal["rle", "polygon"]


def labels_to_coco(
    images: pd.DataFrame,
    labels: pd.DataFrame,
    class_names: list[str],
    *,
    mask_format: MaskFormat = "rle",
) -> dict:
    """A COCO detection dict for the label table.

    Image ids count from 1 in relative-path order and category ids are ``class_id + 1``
    (COCO ids start at 1; tools such as CVAT require it). Every readable image is
    listed, with or without boxes, because an image without boxes is a true negative
    for training and evaluation; skipped images are left out. Each annotation keeps
    the model's ``score``, so the file also serves as a detection result for
    ``COCOeval``.

    Args:
        images: The image manifest (``tasks.labels.read_images``).
        labels: The label table (``tasks.labels.read_labels``).
        class_names: Class names in ``class_id`` order.
        mask_format: ``rle`` or ``polygon`` segmentations for labels with a mask.

    Returns:
        A dict with ``images``, ``annotations`` and ``categories``, ready for
        ``json.dump``.
    """
    exported = images_to_export(images, labels, class_names=class_names)
    return coco_dict(exported, class_names, mask_format)


def write_coco(
    layout: OutputLayout, class_names: list[str], *, mask_format: MaskFormat = "rle"
) -> Path:
    """Export the output folder's labels as COCO; returns the annotations file.

    Images are placed first and the JSON written last, so an existing annotations
    file means a finished export. A rerun skips images already in place.
    """
    exported = images_to_export(
        read_images(layout), read_labels(layout), class_names=class_names
    )
    for image in exported:
        materialize_image(
            local_source(image.source_uri, layout.root),
            image_destination(layout.coco_images_dir, image.export_path),
            orientation=image.orientation,
        )
    coco = coco_dict(exported, class_names, mask_format)
    write_text_atomically(
        layout.coco_json, json.dumps(coco, separators=(",", ":"), allow_nan=False)
    )
    return layout.coco_json


def coco_dict(
    exported: list[ExportImage],
    class_names: list[str],
    mask_format: MaskFormat,
    *,
    file_name: Callable[[ExportImage], str] = lambda image: (
        f"images/{image.export_path}"
    ),
) -> dict:
    """The COCO dict of ``exported`` images (``file_name``: each one's file name)."""
    coco_images: list[dict] = []
    annotations: list[dict] = []
    for image_id, image in enumerate(exported, start=1):
        coco_images.append(
            {
                "id": image_id,
                "file_name": file_name(image),
                "width": image.width,
                "height": image.height,
            }
        )
        xywh = sv.xyxy_to_xywh(image.labels[_XYXY].to_numpy(dtype=np.float64))
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
    return {"images": coco_images, "annotations": annotations, "categories": categories}


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
    layout: OutputLayout, class_names: list[str], mask_format: MaskFormat = "rle"
) -> Path:
    """Prefect task for ``write_coco`` (no cache: its result is files on disk)."""
    return write_coco(layout, class_names, mask_format=mask_format)
