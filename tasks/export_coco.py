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
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
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
from tasks.export_images import (
    ExportImage,
    images_to_export,
    iter_export_images,
    plan_export,
)
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

    Written as it is read, one chunk's labels at a time (``iter_export_images``):
    each split's file is streamed (``CocoFileWriter``), so memory does not grow with
    the dataset; the file is the one ``coco_dict`` + ``json.dumps`` would write.
    """
    splits = splits or Splits()
    plan = plan_export(layout, flatten=True)
    with swapped_in_folder(layout.coco_dir) as folder, ExitStack() as files:

        def writer_for(split: SplitName) -> CocoFileWriter:
            split_dir = folder / ROBOFLOW_FOLDERS[split]
            split_dir.mkdir(parents=True)
            return files.enter_context(
                CocoFileWriter(split_dir / COCO_ANNOTATIONS, class_names, mask_format)
            )

        writers = {split: writer_for(split) for split in splits.names}
        for image in iter_export_images(layout, plan, class_names=class_names):
            split = splits.split_of(image.image_id)
            if split not in writers:
                writers[split] = writer_for(split)
            writer = writers[split]
            place_images(layout, writer.path.parent, [image])
            writer.add(image, image.export_path)
    return layout.coco_dir


class CocoFileWriter:
    """One COCO file written image by image: ``images`` go straight to the file,
    ``annotations`` to a side file appended at the end (JSON wants all images before
    any annotation). Ids count from 1 in the order images are added, as in
    ``coco_dict``; the bytes equal ``json.dumps(coco_dict(...), separators=(",",
    ":"))`` of the same images. Use as a context manager: leaving the block without an
    error finishes the file; an error leaves a partial file (export folders are
    temporary until swapped in, see ``export_files.swapped_in_folder``)."""

    def __init__(
        self, path: Path, class_names: list[str], mask_format: MaskFormat
    ) -> None:
        self.path = path
        self._class_names = class_names
        self._mask_format = mask_format
        self._images = 0
        self._annotations = 0
        self._side_path = path.with_name(f".{path.name}.annotations")

    def __enter__(self) -> CocoFileWriter:
        self._file = self.path.open("w", encoding="utf-8")
        self._side = self._side_path.open("w+", encoding="utf-8")
        head = coco_header()
        self._file.write(
            '{"info":'
            + _dumps(head["info"])
            + ',"licenses":'
            + _dumps(head["licenses"])
            + ',"images":['
        )
        return self

    def add(self, image: ExportImage, file_name: str) -> None:
        """Append one image (``file_name``: its name in the export) and its labels."""
        entry, annotations = coco_entries(
            image,
            self._mask_format,
            image_id=self._images + 1,
            file_name=file_name,
            first_annotation_id=self._annotations + 1,
        )
        self._file.write(("," if self._images else "") + _dumps(entry))
        for annotation in annotations:
            self._side.write(("," if self._annotations else "") + _dumps(annotation))
            self._annotations += 1
        self._images += 1

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            if error_type is None:
                self._file.write('],"annotations":[')
                self._side.seek(0)
                shutil.copyfileobj(self._side, self._file)
                categories = coco_categories(self._class_names)
                self._file.write('],"categories":' + _dumps(categories) + "}")
        finally:
            self._side.close()
            self._file.close()
            self._side_path.unlink(missing_ok=True)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def split_export(
    layout: OutputLayout, class_names: list[str], splits: Splits | None
) -> dict[SplitName, list[ExportImage]]:
    """The images to export (flat names: ``ExportImage.export_path``), by split of
    ``splits`` (None: all in train); an image's split follows from its content hash.

    Holds every image's labels: for small folders and tests. Exports stream
    (``plan_export`` + ``iter_export_images``).
    """
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
        entry, image_annotations = coco_entries(
            image,
            mask_format,
            image_id=image_id,
            file_name=name,
            first_annotation_id=len(annotations) + 1,
        )
        coco_images.append(entry)
        annotations.extend(image_annotations)
    return {
        **coco_header(),
        "images": coco_images,
        "annotations": annotations,
        "categories": coco_categories(class_names),
    }


def coco_header() -> dict:
    """The ``info`` and ``licenses`` of every COCO file we write."""
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
    }


def coco_categories(class_names: list[str]) -> list[dict]:
    """COCO categories: id ``class_id + 1``, in class-id order."""
    return [
        {"id": class_id + 1, "name": name, "supercategory": "none"}
        for class_id, name in enumerate(class_names)
    ]


def coco_entries(
    image: ExportImage,
    mask_format: MaskFormat,
    *,
    image_id: int,
    file_name: str,
    first_annotation_id: int,
) -> tuple[dict, list[dict]]:
    """One image's COCO ``images`` entry and its annotations, ids from
    ``first_annotation_id`` (the part of a COCO file that grows with the dataset)."""
    entry = {
        "id": image_id,
        "license": LICENSE["id"],
        "file_name": file_name,
        "width": image.width,
        "height": image.height,
        "date_captured": EXPORT_DATE,
    }
    annotations: list[dict] = []
    xywh = sv.xyxy_to_xywh(export_xyxy(image.labels))
    class_ids = image.labels["class_id"].to_numpy(dtype=int)
    scores = image.labels["confidence"].to_numpy(dtype=np.float64)
    masks = _mask_texts(image.labels)
    for (x, y, w, h), class_id, score, mask in zip(
        xywh.tolist(), class_ids.tolist(), scores.tolist(), masks, strict=True
    ):
        annotation = {
            "id": first_annotation_id + len(annotations),
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
    return entry, annotations


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
