"""YOLO detection and segmentation export in Roboflow's YOLO layout, which
Ultralytics and supervision read as it is::

    OUT/yolo/data.yaml
    OUT/yolo/train/images/a__x.jpg   OUT/yolo/train/labels/a__x.txt
    OUT/yolo/valid/images/...        OUT/yolo/valid/labels/...
    OUT/yolo/test/images/...         (only with a test split)

Splits: ``tasks.splits.Splits.with_val()`` of the given splits (default: train plus a
10% val split, by content hash: stable across runs), one folder per split even when
it drew no image, named as Roboflow names them (val -> ``valid``).

File names are flat (``a/x.jpg`` -> ``a__x.jpg``, see
``tasks.export_names.flat_export_names``): supervision's ``from_yolo`` lists only the
files directly in ``images/`` and finds each label by bare stem, so nested folders
were missed. Names are unique by stem over the whole export (``x.jpg`` and ``x.png``
would share ``x.txt``: the second becomes ``x-<hash>.png``); which file each image
became, and its split, is in ``OUT/export_names.parquet``. We write the files
ourselves instead of through ``supervision.DetectionDataset.as_yolo``, which
re-encodes images with cv2.

``data.yaml`` has no ``path`` key, on purpose: Ultralytics (``check_det_dataset``)
takes the dataset root from ``path``, or, without one, from the yaml's own folder,
and a relative ``path`` such as ``.`` is resolved against the current directory (or
its datasets dir), not the yaml. So ``train: train/images``, ``val: valid/images``
(and ``test: test/images``) are relative to the yaml wherever the folder is moved,
and supervision's ``from_yolo`` only reads ``names`` from it. ``names`` is a mapping
``{class_id: name}`` in ontology order, with ``nc``.

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

from tasks.export_files import (
    image_destination,
    local_source,
    materialize_image,
    swapped_in_folder,
)
from tasks.export_images import (
    ExportImage,
    iter_export_images,
    plan_export,
    write_plan_export_names,
)
from tasks.labels import OutputLayout
from tasks.masks import mask_to_yolo_polygon, rle_to_mask
from tasks.splits import ROBOFLOW_FOLDERS, Splits

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


def write_yolo(
    layout: OutputLayout, class_names: list[str], splits: Splits | None = None
) -> Path:
    """Export the output folder's labels as YOLO; returns the ``data.yaml`` path.

    ``OUT/yolo/<folder>/images/<flat name>`` and ``.../labels/<flat stem>.txt`` for
    each split of ``splits.with_val()`` (``Splits()`` by default: train plus a 10%
    val), folders named as in Roboflow's exports (``train``, ``valid``, ``test``),
    each present even when its split drew no image. Every readable image gets a label
    file, an empty one when it has no boxes: YOLO reads that as a background image,
    whereas a missing file reads as "not labeled". Also writes
    ``OUT/export_names.parquet`` (see ``write_export_names``). Streamed: one
    chunk's labels at a time (``iter_export_images``).

    The export is written into a temporary sibling folder and swapped in at the end,
    so files of earlier exports (and the nested ``yolo/images/`` layout of older
    versions) are gone and a crash leaves the previous export whole.
    """
    splits = (splits or Splits()).with_val()
    plan = plan_export(layout, flatten=True)
    with swapped_in_folder(layout.yolo_dir) as root:
        folders: dict[str, Path] = {}

        def folder_of(split: str) -> Path:
            if split not in folders:
                folder = root / ROBOFLOW_FOLDERS[split]
                (folder / "images").mkdir(parents=True)
                (folder / "labels").mkdir()
                folders[split] = folder
            return folders[split]

        for split in splits.names:
            folder_of(split)
        for image in iter_export_images(layout, plan, class_names=class_names):
            folder = folder_of(splits.split_of(image.image_id))
            _write_image_and_labels(layout, image, folder)
        data = yolo_data_yaml(class_names, split_names=list(folders))
        (root / "data.yaml").write_text(
            yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
    write_plan_export_names(layout, plan, splits)
    return layout.yolo_dir / "data.yaml"


def yolo_data_yaml(class_names: list[str], *, split_names: list[str]) -> dict:
    """The ``data.yaml`` of an export with these splits (see the module docstring).

    No ``path`` key: Ultralytics then resolves ``train``/``val``/``test`` against the
    yaml's own folder (``path: .`` would mean the current directory).
    """
    data: dict = {split: f"{ROBOFLOW_FOLDERS[split]}/images" for split in split_names}
    data["nc"] = len(class_names)
    data["names"] = dict(enumerate(class_names))
    return data


def _write_image_and_labels(
    layout: OutputLayout, image: ExportImage, folder: Path
) -> None:
    materialize_image(
        local_source(image.source_uri, layout.root),
        image_destination(folder / "images", image.export_path),
        orientation=image.orientation,
    )
    lines = labels_to_yolo_lines(
        image.labels, resolution_wh=(image.width, image.height)
    )
    label_name = PurePosixPath(image.export_path).with_suffix(".txt").as_posix()
    image_destination(folder / "labels", label_name).write_text(
        "".join(f"{line}\n" for line in lines), encoding="utf-8"
    )


@task(name="export-yolo", cache_policy=NO_CACHE)
def export_yolo_task(
    layout: OutputLayout, class_names: list[str], splits: Splits | None = None
) -> Path:
    """Prefect task for ``write_yolo`` (no cache: its result is files on disk)."""
    return write_yolo(layout, class_names, splits)
