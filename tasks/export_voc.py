"""Pascal VOC export in Roboflow's layout: ``voc/<split>/`` holding each image and its
``<stem>.xml`` beside it (``train/``, ``valid/``, ``test/``).

The XML is supervision's own writer (``detections_to_pascal_voc``), so its reader
(``sv.DetectionDataset.from_pascal_voc`` with the split folder as both the images and
the annotations folder) opens the export as it is. VOC has no masks: a segmentation
label is written as its box, the same box as in the COCO export (the mask's tight box,
or the detector's box for an empty mask). VOC boxes are whole pixels (1-based,
inclusive), so coordinates are rounded to the nearest pixel.

Image names, splits, hard links and the swap of the whole ``voc/`` folder at the end
are those of the COCO export (``tasks.export_coco``): flat names unique by stem
(``export_names.flat_export_names``), so ``x.jpg`` and ``x.png`` never share one
``x.xml``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pandas as pd
import supervision as sv
from prefect import task
from prefect.cache_policies import NO_CACHE
from supervision.dataset.formats.pascal_voc import detections_to_pascal_voc

from tasks.export_coco import export_xyxy, place_images
from tasks.export_files import swapped_in_folder
from tasks.export_images import iter_export_images, plan_export
from tasks.labels import OutputLayout
from tasks.splits import ROBOFLOW_FOLDERS, Splits


def labels_to_pascal_voc(
    labels: pd.DataFrame,
    class_names: list[str],
    *,
    filename: str,
    resolution_wh: tuple[int, int],
) -> str:
    """One image's labels as a Pascal VOC XML document (boxes, highest score first
    as ``images_to_export`` orders them).

    Args:
        labels: The image's rows of the label table.
        class_names: Class names in ``class_id`` order.
        filename: The image's file name in the export (``<filename>``).
        resolution_wh: The image's (upright) width and height.
    """
    detections = sv.Detections(
        xyxy=export_xyxy(labels),
        class_id=labels["class_id"].to_numpy(dtype=int),
    )
    width, height = resolution_wh
    return detections_to_pascal_voc(
        detections=detections,
        classes=list(class_names),
        filename=filename,
        image_shape=(height, width, 3),
    )


def write_voc(
    layout: OutputLayout, class_names: list[str], splits: Splits | None = None
) -> Path:
    """Export the output folder's labels as Pascal VOC; returns ``layout.voc_dir``.

    One folder per split of ``splits.names`` (None: everything in train), each with
    the split's images and one XML per image, an empty one (no ``<object>``) for an
    image without labels, which VOC readers take as a background image. Streamed:
    one chunk's labels at a time (``iter_export_images``).
    """
    splits = splits or Splits()
    plan = plan_export(layout, flatten=True)
    with swapped_in_folder(layout.voc_dir) as folder:
        split_dirs: dict[str, Path] = {}

        def split_dir_of(split: str) -> Path:
            if split not in split_dirs:
                split_dirs[split] = folder / ROBOFLOW_FOLDERS[split]
                split_dirs[split].mkdir(parents=True)
            return split_dirs[split]

        for split in splits.names:
            split_dir_of(split)
        for image in iter_export_images(layout, plan, class_names=class_names):
            split_dir = split_dir_of(splits.split_of(image.image_id))
            place_images(layout, split_dir, [image])
            xml = labels_to_pascal_voc(
                image.labels,
                class_names,
                filename=image.export_path,
                resolution_wh=(image.width, image.height),
            )
            xml_name = PurePosixPath(image.export_path).with_suffix(".xml").name
            (split_dir / xml_name).write_text(xml, encoding="utf-8")
    return layout.voc_dir


@task(name="export-voc", cache_policy=NO_CACHE)
def export_voc_task(
    layout: OutputLayout, class_names: list[str], splits: Splits | None = None
) -> Path:
    """Prefect task for ``write_voc`` (no cache: its result is files on disk)."""
    return write_voc(layout, class_names, splits)
