"""End to end without Prefect: ``label_chunk`` with the segment and classify specs over
real photos, then every export of that task, read back by independent readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from roboflow.util.folderparser import parsefolder

from tasks.export_classification import (
    write_class_folders,
    write_class_table,
    write_roboflow_classification,
)
from tasks.export_coco import coco_annotations_path, write_coco
from tasks.export_yolo import write_yolo
from tasks.labels import read_images, read_labels
from tasks.masks import rle_area, rle_to_mask
from tests.labeling import label_folder
from tests.segment_classify import ONTOLOGY, classify_settings, segment_settings

pytestmark = pytest.mark.usefixtures("empty_model_cache")


def test_segment_labels_carry_masks_that_coco_and_yolo_export(
    tiny_grounding_dino: str, tiny_sam: str, sample_photos: Path, tmp_path: Path
) -> None:
    settings = segment_settings(tiny_grounding_dino, tiny_sam, nms="class")

    layout = label_folder(sample_photos, tmp_path / "out", settings)

    labels = read_labels(layout)
    assert len(labels) > 0 and labels["mask"].notna().all()
    for row in labels.itertuples():
        rle = json.loads(row.mask)
        assert rle["size"] == [row.height, row.width]
    write_coco(layout, ONTOLOGY.class_names)
    coco = COCO(str(coco_annotations_path(layout)))
    assert len(coco.anns) == len(labels)
    stored = {
        (row.source_uri.rsplit("/", 1)[1], round(row.confidence, 6)): row.mask
        for row in labels.itertuples()
    }
    for ann in coco.anns.values():
        name = coco.imgs[ann["image_id"]]["file_name"]
        rle = json.loads(stored[(name, round(ann["score"], 6))])
        np.testing.assert_array_equal(
            coco.annToMask(ann).astype(bool), rle_to_mask(rle)
        )
        assert ann["area"] == rle_area(rle)
    yolo = write_yolo(layout, ONTOLOGY.class_names).parent
    lines = sum(len(p.read_text().splitlines()) for p in yolo.glob("*/labels/*.txt"))
    assert lines == len(labels)


@pytest.mark.parametrize("task", ["classify", "classify-multi"])
def test_classify_labels_export_as_folders_table_and_roboflow_layout(
    task: str, tiny_clip: str, sample_photos: Path, tmp_path: Path
) -> None:
    settings = classify_settings(
        task, tiny_clip, batch_size=3, threshold=0.0, chunk_size=3
    )
    multi = task == "classify-multi"

    layout = label_folder(sample_photos, tmp_path / "out", settings)

    labels = read_labels(layout)
    per_image = labels.groupby("source_uri").size()
    assert len(read_images(layout)) == 4
    assert (per_image == (3 if multi else 1)).all() and len(per_image) == 4
    assert (labels["x_min"] == 0).all() and (labels["x_max"] == labels["width"]).all()
    table = json.loads(
        write_class_table(layout, ONTOLOGY.class_names).with_suffix(".json").read_text()
    )
    assert [len(image["classes"]) for image in table["images"]] == [
        3 if multi else 1
    ] * 4
    root = write_roboflow_classification(
        layout, ONTOLOGY.class_names, multi_label=multi
    )
    parsed = parsefolder(str(root), is_classification=not multi)
    assert len(parsed["images"]) == 4
    assert all(image.get("annotationfile") for image in parsed["images"])
    if not multi:
        folders = write_class_folders(layout, ONTOLOGY.class_names)
        assert len(list(folders.rglob("*.jpg"))) == 4
