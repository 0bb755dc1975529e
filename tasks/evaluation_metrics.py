"""Detection metrics of labels against truth boxes, both already paired by image and
class: P/R/F1 by greedy matching at one IoU, and AP from pycocotools' COCOeval.

Kept apart from ``tasks.evaluate`` (which reads the output folder and the truth) so the
arithmetic works on plain tables and can be checked by hand, with no folder around it.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]


@dataclass
class ClassMetrics:
    """One class's (or all classes') counts and scores; None where undefined (no
    labels: precision; no truth: recall and AP)."""

    truth: int
    labels: int
    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None
    ap50: float | None = None
    ap: float | None = None
    ap50_segm: float | None = None
    ap_segm: float | None = None


def count_matches(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    classes: Sequence[str],
    iou: float,
) -> tuple[dict[str, ClassMetrics], ClassMetrics]:
    """Per class and summed over classes: true and false positives and misses at
    ``iou``. In each image, labels go by score (highest first; ties in table order)
    and take the unmatched truth box of their class they overlap most, if at least
    ``iou``: COCOeval's matching."""
    per_class = {}
    for name in classes:
        tp = 0
        ours = predictions[predictions["class_name"] == name]
        theirs = truth[truth["class_name"] == name]
        for image_id, rows in ours.groupby("image_id", sort=False):
            boxes = theirs.loc[theirs["image_id"] == image_id, BOX_COLUMNS].to_numpy()
            order = np.argsort(-rows["confidence"].to_numpy(), kind="mergesort")
            ordered = rows[BOX_COLUMNS].to_numpy()[order]
            tp += int(greedy_match_flags(ordered, boxes, iou).sum())
        per_class[name] = scores_from_counts(len(theirs), len(ours), tp)
    overall = scores_from_counts(
        sum(m.truth for m in per_class.values()),
        sum(m.labels for m in per_class.values()),
        sum(m.tp for m in per_class.values()),
    )
    return per_class, overall


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes (rows of ``a`` by rows of ``b``)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_match_flags(
    ordered: np.ndarray, truth: np.ndarray, iou: float
) -> np.ndarray:
    """Whether each box of ``ordered`` (one image and class, highest score first)
    takes a truth box: the unmatched one it overlaps most, if at least ``iou``
    (COCOeval's matching). The one matcher of the evaluation and threshold tuning."""
    overlaps = box_iou(ordered, truth)
    taken = np.zeros(len(truth), dtype=bool)
    flags = np.zeros(len(ordered), dtype=bool)
    for index, row in enumerate(overlaps):
        candidates = np.where(~taken & (row >= iou), row, -1.0)
        if len(candidates) and candidates.max() >= 0:
            taken[int(candidates.argmax())] = True
            flags[index] = True
    return flags


def scores_from_counts(truth: int, labels: int, tp: int) -> ClassMetrics:
    """Precision, recall and F1 of ``tp`` right labels among ``labels``, against
    ``truth`` true instances (None where a denominator is 0)."""
    fp, fn = labels - tp, truth - tp
    return ClassMetrics(
        truth=truth,
        labels=labels,
        tp=tp,
        fp=fp,
        fn=fn,
        precision=tp / labels if labels else None,
        recall=tp / truth if truth else None,
        f1=2 * tp / (2 * tp + fp + fn) if truth or labels else None,
    )


def coco_average_precision(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    images: dict[str, dict[str, int]],
    classes: Sequence[str],
    iou_type: str,
) -> tuple[dict[str, tuple[float | None, float | None]], dict]:
    """(AP@0.5, AP@[.5:.95]) per class and overall (key ``""``: the mean over classes
    with truth, COCO's mAP) from COCOeval, and each class's interpolated
    precision-recall curve at IoU 0.5."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_ids = {image_id: n for n, image_id in enumerate(images, start=1)}
    class_ids = {name: n for n, name in enumerate(classes, start=1)}
    dataset = {
        "info": {},
        "licenses": [],
        "images": [
            {
                "id": n,
                "width": int(images[i]["width"]),
                "height": int(images[i]["height"]),
            }
            for i, n in image_ids.items()
        ],
        "categories": [{"id": n, "name": name} for name, n in class_ids.items()],
        "annotations": [
            {
                "id": n,
                "image_id": image_ids[row.image_id],
                "category_id": class_ids[row.class_name],
                "iscrowd": 0,
                **_geometry(row, iou_type),
            }
            for n, row in enumerate(truth.itertuples(), start=1)
        ],
    }
    results = [
        {
            "image_id": image_ids[row.image_id],
            "category_id": class_ids[row.class_name],
            "score": float(row.confidence),
            **{k: v for k, v in _geometry(row, iou_type).items() if k != "area"},
        }
        for row in predictions.itertuples()
    ]
    if not classes or not images:
        return {}, {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_truth = COCO()
        coco_truth.dataset = dataset
        coco_truth.createIndex()
        if not results:
            per_class = {
                name: (0.0, 0.0)
                if (truth["class_name"] == name).any()
                else (None, None)
                for name in classes
            }
            return _with_mean(per_class), {}
        evaluator = COCOeval(coco_truth, coco_truth.loadRes(results), iou_type)
        most = int(predictions.groupby("image_id").size().max())
        evaluator.params.maxDets = [1, 10, max(100, most)]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # IoU, recall, class
    recall_points = [float(r) for r in evaluator.params.recThrs]
    per_class, curves = {}, {}
    for name, n in class_ids.items():
        values = precision[:, :, n - 1]
        if (values < 0).all():
            per_class[name] = (None, None)
            continue
        per_class[name] = (float(values[0].mean()), float(values.mean()))
        curves[name] = {
            "recall": recall_points,
            "precision": [float(p) for p in values[0]],
        }
    return _with_mean(per_class), curves


def _with_mean(per_class: dict) -> dict:
    scored = [pair for pair in per_class.values() if pair[0] is not None]
    mean = (
        (float(np.mean([p[0] for p in scored])), float(np.mean([p[1] for p in scored])))
        if scored
        else (None, None)
    )
    return {**per_class, "": mean}


def _geometry(row, iou_type: str) -> dict:
    x, y = float(row.x_min), float(row.y_min)
    w, h = float(row.x_max) - x, float(row.y_max) - y
    if iou_type == "segm":
        from pycocotools import mask as mask_utils

        rle = json.loads(row.mask)
        return {
            "bbox": [x, y, w, h],
            "segmentation": rle,
            "area": float(mask_utils.area(rle)),
        }
    return {"bbox": [x, y, w, h], "area": w * h}
