"""YOLO detection and segmentation export: ``yolo/data.yaml``, ``yolo/images/...``,
``yolo/labels/...``.

Label files mirror the image tree (``images/a/x.jpg`` -> ``labels/a/x.txt``), the layout
Ultralytics reads recursively, so ``a/x.jpg`` and ``b/x.jpg`` do not collide; in one
folder, ``x.jpg`` and ``x.png`` would share ``x.txt``, so the second is exported as
``x-<hash>.png`` (see ``tasks.export_images``), as is any name over 200 bytes. We write
the files ourselves instead of through ``supervision.DetectionDataset.as_yolo``, which
re-encodes images with cv2 and names label files by bare stem. Known limit: Ultralytics
finds a label by replacing the LAST '/images/' of the image path, so a source sub-folder
itself named 'images' would send it looking in the wrong place.

Labels with masks are written as YOLO segmentation lines (``class x1 y1 x2 y2 ...``),
one line per label, whose polygon comes from ``tasks.masks.mask_to_yolo_polygon``: holes
are spliced in exactly, separate parts are joined by one-pixel seams (as Ultralytics'
own COCO converter does), and vertices are pixel centres, so the format is lossy at the
border; the COCO export keeps masks exactly. A label whose mask is empty is written as
its box's rectangle: a file mixing box lines and polygon lines is misread by
Ultralytics.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import supervision as sv
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.export_images import (
    image_destination,
    images_to_export,
    local_source,
    materialize_image,
    write_text_atomically,
)
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.masks import mask_to_yolo_polygon, rle_to_mask

_XYXY = ["x_min", "y_min", "x_max", "y_max"]


def labels_to_yolo_lines(
    labels: pd.DataFrame, *, resolution_wh: tuple[int, int]
) -> list[str]:
    """YOLO lines for the labels of one image, in row order.

    Lines are ``class_id cx cy w h`` for boxes, or ``class_id x1 y1 ... xn yn`` when the
    labels carry masks (see the module docstring).

    Boxes are clipped to the image before normalising, so a box poking out of the frame
    keeps its visible part instead of a centre or size outside [0, 1], which YOLO
    loaders reject or drop. Six decimals keep boxes within 1e-6 of the image size
    (a thousandth of a pixel on a 1000 px image).

    Args:
        labels: Rows of the label table for one image.
        resolution_wh: The image's (width, height) after EXIF orientation, the frame
            the boxes are in.
    """
    width, height = resolution_wh
    xyxy = sv.clip_boxes(
        labels[_XYXY].to_numpy(dtype=np.float64), resolution_wh=resolution_wh
    )
    if "mask" in labels.columns and labels["mask"].notna().any():
        return _polygon_lines(labels, xyxy, resolution_wh)
    x, y, w, h = sv.xyxy_to_xywh(xyxy).T
    normalised = np.column_stack(
        [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
    )
    class_ids = labels["class_id"].to_numpy(dtype=int)
    return [
        f"{class_id} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}"
        for class_id, (cx, cy, bw, bh) in zip(
            class_ids.tolist(), normalised.tolist(), strict=True
        )
    ]


def _polygon_lines(
    labels: pd.DataFrame, xyxy: np.ndarray, resolution_wh: tuple[int, int]
) -> list[str]:
    lines = []
    scale = np.array(resolution_wh, dtype=np.float64)
    for class_id, box, mask in zip(
        labels["class_id"].to_numpy(dtype=int).tolist(),
        xyxy,
        labels["mask"].tolist(),
        strict=True,
    ):
        polygon = (
            mask_to_yolo_polygon(rle_to_mask(json.loads(mask)))
            if isinstance(mask, str)
            else None
        )
        if polygon is None:
            x0, y0, x1, y1 = box
            polygon = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        normalised = np.clip(np.asarray(polygon, dtype=np.float64) / scale, 0.0, 1.0)
        points = " ".join(f"{v:.6f}" for v in normalised.ravel().tolist())
        lines.append(f"{class_id} {points}")
    return lines


def write_yolo(layout: OutputLayout, class_names: list[str]) -> Path:
    """Export the output folder's labels as YOLO; returns the ``data.yaml`` path.

    Every readable image gets a label file, an empty one when it has no boxes: YOLO
    reads that as a background image, whereas a missing file reads as "not labeled".
    ``data.yaml`` is written last, so its presence means a finished export; ``train``
    and ``val`` both point at all images (splitting is not this step's job).

    YOLO pairs images and labels by stem, so images are exported under names unique
    by stem (``x.jpg`` and ``x.png`` in one folder: the second becomes
    ``x-<hash>.png``).
    """
    exported = images_to_export(
        read_images(layout),
        read_labels(layout),
        class_names=class_names,
        clash_by="stem",
    )
    label_paths = [
        PurePosixPath(image.export_path).with_suffix(".txt").as_posix()
        for image in exported
    ]
    images_dir = layout.yolo_dir / "images"
    labels_dir = layout.yolo_dir / "labels"
    for image, label_path in zip(exported, label_paths, strict=True):
        materialize_image(
            local_source(image.source_uri, layout.root),
            image_destination(images_dir, image.export_path),
            orientation=image.orientation,
        )
        lines = labels_to_yolo_lines(
            image.labels, resolution_wh=(image.width, image.height)
        )
        write_text_atomically(
            image_destination(labels_dir, label_path),
            "".join(f"{line}\n" for line in lines),
        )
    data = {
        "names": list(class_names),
        "nc": len(class_names),
        "train": "images",
        "val": "images",
    }
    data_yaml = layout.yolo_dir / "data.yaml"
    write_text_atomically(data_yaml, yaml.safe_dump(data, sort_keys=False))
    return data_yaml


@task(name="export-yolo", cache_policy=NO_CACHE)
def export_yolo_task(layout: OutputLayout, class_names: list[str]) -> Path:
    """Prefect task for ``write_yolo`` (no cache: its result is files on disk)."""
    return write_yolo(layout, class_names)
