"""How good are the labels: an output folder's labels measured against human labels.

``evaluate_output`` takes the labels at the approved thresholds (``OUT/approved.json``,
else every row, as labeled), pairs them with the truth (``tasks.truth.match_truth``)
and computes, per class and overall, precision, recall and F1 at one IoU and AP@0.5
and AP@[.5:.95] (``tasks.evaluation_metrics``; segm too when every label and truth box
has a mask). ``tasks.evaluation_report`` writes the result to ``OUT/evaluation/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from model_loaders.protocol import CLASSIFICATION_TASKS
from tasks.approval import approved_path, load_approved
from tasks.evaluation_metrics import (
    ClassMetrics,
    coco_average_precision,
    count_matches,
)
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.truth import GroundTruth, TruthMatch, match_truth, read_truth


class EvaluationError(ValueError):
    """An output folder that cannot be evaluated; one line saying why."""


@dataclass
class Evaluation:
    """Everything ``autolabel evaluate`` reports (metrics.json is its ``asdict``)."""

    out: str
    truth: str
    iou: float
    thresholds: dict[str, float] | None  # None: every label, as labeled
    thresholds_from: str
    images: int
    per_class: dict[str, ClassMetrics]
    overall: ClassMetrics
    matched_by: dict[str, int]
    class_map: dict[str, str]
    unmatched_truth_images: list[str]
    labeled_images_without_truth: list[str]
    duplicate_truth_images: list[str]
    resized_truth_images: list[str]
    unknown_truth_classes: dict[str, int]
    classes_without_truth: list[str]
    clipped_truth_boxes: int
    outside_truth_boxes: int
    segm: str  # "evaluated" or why not
    pr_curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def predictions_at_thresholds(
    out: str | Path,
) -> tuple[pd.DataFrame, dict[str, float] | None, str, list[str]]:
    """The labels of ``out`` kept at its approved thresholds; the thresholds (None: all
    rows, as labeled), where they came from, and every class the output knows.

    Raises:
        EvaluationError: If ``out`` holds no label table, or is a classification run.
        ApprovalError: If its approved.json cannot be read.
    """
    layout = OutputLayout(out)
    if not layout.labels_dir.is_dir() or not any(layout.labels_dir.glob("*.parquet")):
        raise EvaluationError(f"{layout.labels_dir}: no label table (label first)")
    labels = read_labels(layout)
    classes = list(dict.fromkeys(labels["class_name"].tolist()))
    if not approved_path(out).is_file():
        return labels, None, "as labeled (no approved.json: every label)", classes
    settings = load_approved(out).settings
    if settings.model.task in CLASSIFICATION_TASKS:
        raise EvaluationError(
            f"{approved_path(out)}: task {settings.model.task}: evaluating "
            "classification labels is not supported yet"
        )
    names = list(dict.fromkeys([*settings.ontology.class_names, *classes]))
    thresholds = settings.thresholds.for_classes(names)
    limits = labels["class_name"].map(thresholds).to_numpy(dtype=float)
    kept = labels[labels["confidence"].to_numpy() >= limits].reset_index(drop=True)
    return kept, thresholds, str(approved_path(out)), names


def evaluate_output(
    out: str | Path,
    truth: GroundTruth,
    *,
    class_map: dict[str, str] | None = None,
    iou: float = 0.5,
) -> Evaluation:
    """Measure the labels of ``out`` against ``truth`` (see the module docstring).

    Raises:
        EvaluationError, ApprovalError: ``out`` cannot be evaluated.
        MapError: ``class_map`` names an unknown class.
    """
    labels, thresholds, source, our_classes = predictions_at_thresholds(out)
    manifest = read_images(OutputLayout(out))
    match = match_truth(truth, manifest, our_classes=our_classes, class_map=class_map)
    sizes = (
        manifest.drop_duplicates("image_id")
        .set_index("image_id")[["width", "height"]]
        .to_dict("index")
    )
    images = {image_id: sizes[image_id] for image_id in match.image_ids}
    predictions = labels[
        labels["image_id"].isin(images) & labels["class_name"].isin(match.classes)
    ].reset_index(drop=True)
    per_class, overall = count_matches(
        predictions, match.boxes, classes=match.classes, iou=iou
    )
    ap, curves = coco_average_precision(
        predictions, match.boxes, images=images, classes=match.classes, iou_type="bbox"
    )
    segm = _segm_status(predictions, match.boxes)
    ap_segm = (
        coco_average_precision(
            predictions,
            match.boxes,
            images=images,
            classes=match.classes,
            iou_type="segm",
        )[0]
        if segm == "evaluated"
        else {}
    )
    for name, metrics in [*per_class.items(), ("", overall)]:
        metrics.ap50, metrics.ap = ap.get(name, (None, None))
        metrics.ap50_segm, metrics.ap_segm = ap_segm.get(name, (None, None))
    return _evaluation(
        out, truth, match, iou, thresholds, source, per_class, overall, segm, curves
    )


def _segm_status(predictions: pd.DataFrame, truth: pd.DataFrame) -> str:
    if not truth["mask"].notna().any() or not predictions["mask"].notna().any():
        return "not evaluated: the labels or the truth have no masks"
    missing = int(truth["mask"].isna().sum() + predictions["mask"].isna().sum())
    if missing:
        return f"not evaluated: {missing} label(s) or truth box(es) have no mask"
    return "evaluated"


def _evaluation(
    out,
    truth: GroundTruth,
    match: TruthMatch,
    iou,
    thresholds,
    source,
    per_class,
    overall,
    segm,
    curves,
) -> Evaluation:
    return Evaluation(
        out=str(out),
        truth=truth.source,
        iou=iou,
        thresholds=thresholds,
        thresholds_from=source,
        images=len(match.image_ids),
        per_class=per_class,
        overall=overall,
        matched_by=match.matched_by,
        class_map=match.class_map,
        unmatched_truth_images=match.unmatched_images,
        labeled_images_without_truth=match.unlabeled_images,
        duplicate_truth_images=match.duplicate_images,
        resized_truth_images=match.resized_images,
        unknown_truth_classes=match.unknown_classes,
        classes_without_truth=match.classes_without_truth,
        clipped_truth_boxes=truth.clipped,
        outside_truth_boxes=truth.outside,
        segm=segm,
        pr_curves=curves,
    )


read_truth_task = task(read_truth, name="read-truth", cache_policy=NO_CACHE)
evaluate_output_task = task(
    evaluate_output, name="evaluate-output", cache_policy=NO_CACHE
)
