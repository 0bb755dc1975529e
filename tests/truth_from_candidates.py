"""Human labels made from a stored preview's candidates, so the best threshold is known.

A helper module, not a test module: ``right_cats`` picks the cats the batch keeps at
the floor scoring at least a middle score (F1 is 1 exactly there), ``coco_truth``
writes them as a COCO file naming the sample images by relative path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tasks.preview import filter_candidates, load_record, read_candidates, read_manifest
from tasks.thresholds import Thresholds


def kept_at_floor(out: Path, name: str) -> pd.DataFrame:
    """The ``name`` candidates the batch keeps at the floor, highest score first."""
    settings = load_record(out).settings
    kept = filter_candidates(
        read_candidates(out),
        Thresholds(default=0.0),
        nms=settings.nms,
        nms_iou=settings.nms_iou,
        class_names=settings.ontology.class_names,
    )
    rows = kept[kept["class_name"] == name]
    return rows.sort_values("confidence", ascending=False, kind="stable")


def right_cats(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, float, float]:
    """(every kept cat, the right ones, their lowest score, the next higher score)."""
    cats = kept_at_floor(out, "cat")
    scores = sorted(set(cats["confidence"]), reverse=True)
    assert len(scores) >= 4, "the tiny model found too few cats for this test"
    best, higher = scores[len(scores) // 2], scores[len(scores) // 2 - 1]
    return cats, cats[cats["confidence"] >= best], float(best), float(higher)


def coco_truth(folder: Path, out: Path, boxes, categories=("cat", "person")) -> Path:
    """``boxes`` (label-table rows of class ``categories[0]``) as a COCO truth file
    labeling every sample image."""
    manifest = read_manifest(out)
    ids = {row.image_id: n for n, row in enumerate(manifest.itertuples(), start=1)}
    data = {
        "images": [
            {"id": n, "file_name": row.relative_path, "width": int(row.width),
             "height": int(row.height)}
            for n, row in zip(ids.values(), manifest.itertuples(), strict=True)
        ],
        "categories": [{"id": k, "name": c} for k, c in enumerate(categories, 1)],
        "annotations": [
            {"id": k, "image_id": ids[row.image_id], "category_id": 1, "iscrowd": 0,
             "bbox": [row.x_min, row.y_min, row.x_max - row.x_min,
                      row.y_max - row.y_min]}
            for k, row in enumerate(boxes.itertuples(), start=1)
        ],
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "truth.json"
    path.write_text(json.dumps(data))
    return path
