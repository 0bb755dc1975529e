"""How good are the labels: an output folder's labels measured against human labels.

``evaluate_output`` takes the labels at the approved thresholds (``OUT/approved.json``,
else every row, as labeled), pairs them with the truth (``tasks.truth.match_truth``)
and computes, per class and overall, precision, recall and F1 at one IoU and AP@0.5
and AP@[.5:.95] (``tasks.evaluation_metrics``; segm too when every label and truth box
has a mask). Classification labels against classification truth (class folders or a
CSV, ``tasks.truth_classes``) get accuracy and per-class precision/recall/F1, and
per-class AP when multi-label (``tasks.evaluation_classification``).
``tasks.evaluation_report`` writes the result to ``OUT/evaluation/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from model_loaders.protocol import CLASSIFICATION_TASKS
from tasks.approval import approved_path, load_approved
from tasks.evaluation_classification import classification_metrics
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
    task: str = "detect"  # detect, segment, classify, classify-multi
    accuracy: float | None = None  # classification: images whose classes are right
    accuracy_images: int = 0  # the images the accuracy counts


@dataclass
class OutputLabels:
    """An output folder's labels: every stored row, those kept at the thresholds, the
    thresholds (None: every row, as labeled), where they came from, every class the
    output knows, and its task (None without approved.json)."""

    stored: pd.DataFrame
    kept: pd.DataFrame
    thresholds: dict[str, float] | None
    thresholds_from: str
    classes: list[str]
    task: str | None


def output_labels(out: str | Path) -> OutputLabels:
    """The labels of ``out`` at its approved thresholds (see ``OutputLabels``).

    Raises:
        EvaluationError: If ``out`` holds no label table.
        ApprovalError: If its approved.json cannot be read.
    """
    layout = OutputLayout(out)
    if not layout.labels_dir.is_dir() or not any(layout.labels_dir.glob("*.parquet")):
        raise EvaluationError(f"{layout.labels_dir}: no label table (label first)")
    labels = read_labels(layout)
    classes = list(dict.fromkeys(labels["class_name"].tolist()))
    if not approved_path(out).is_file():
        source = "as labeled (no approved.json: every label)"
        return OutputLabels(labels, labels, None, source, classes, None)
    settings = load_approved(out).settings
    names = list(dict.fromkeys([*settings.ontology.class_names, *classes]))
    thresholds = settings.thresholds.for_classes(names)
    limits = labels["class_name"].map(thresholds).to_numpy(dtype=float)
    kept = labels[labels["confidence"].to_numpy() >= limits].reset_index(drop=True)
    source = str(approved_path(out))
    return OutputLabels(labels, kept, thresholds, source, names, settings.model.task)


def predictions_at_thresholds(
    out: str | Path,
) -> tuple[pd.DataFrame, dict[str, float] | None, str, list[str]]:
    """The box labels of ``out`` kept at its approved thresholds; the thresholds
    (None: all rows, as labeled), where they came from, and every class the output
    knows.

    Raises:
        EvaluationError: If ``out`` holds no label table, or is a classification run.
        ApprovalError: If its approved.json cannot be read.
    """
    found = _box_labels(out)
    return found.kept, found.thresholds, found.thresholds_from, found.classes


def _box_labels(out: str | Path) -> OutputLabels:
    found = output_labels(out)
    if found.task in CLASSIFICATION_TASKS:
        raise EvaluationError(
            f"{approved_path(out)}: task {found.task}: classification labels are "
            "evaluated against classification truth (class folders or a CSV)"
        )
    return found


def evaluate_output(
    out: str | Path,
    truth: GroundTruth,
    *,
    class_map: dict[str, str] | None = None,
    iou: float = 0.5,
) -> Evaluation:
    """Measure the labels of ``out`` against ``truth`` (see the module docstring).

    Raises:
        EvaluationError, ApprovalError: ``out`` cannot be evaluated (or not against
            this kind of truth).
        MapError: ``class_map`` names an unknown class.
    """
    if truth.kind == "classes":
        return evaluate_classification(out, truth, class_map=class_map)
    found = _box_labels(out)
    labels, our_classes = found.kept, found.classes
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
    evaluation = _evaluation(
        out,
        truth,
        match,
        iou,
        found.thresholds,
        found.thresholds_from,
        per_class,
        overall,
        segm,
        curves,
    )
    evaluation.task = found.task or "detect"
    return evaluation


def evaluate_classification(
    out: str | Path,
    truth: GroundTruth,
    *,
    class_map: dict[str, str] | None = None,
) -> Evaluation:
    """Classification labels of ``out`` against classification ``truth``: accuracy,
    per-class P/R/F1, and per-class AP when multi-label (see
    ``tasks.evaluation_classification``).

    Raises:
        EvaluationError: If ``out`` holds box labels (detect/segment).
        ApprovalError: If its approved.json cannot be read.
        MapError: ``class_map`` names an unknown class.
    """
    found = output_labels(out)
    if found.task is not None and found.task not in CLASSIFICATION_TASKS:
        raise EvaluationError(
            f"{truth.source}: classification truth, but {out} holds {found.task} "
            "labels: evaluate them against COCO or YOLO truth"
        )
    manifest = read_images(OutputLayout(out))
    match = match_truth(truth, manifest, our_classes=found.classes, class_map=class_map)
    multi_label = (
        found.task == "classify-multi"
        if found.task is not None
        else truth.multi_label
        or bool(found.kept.groupby("image_id").size().gt(1).any())
    )
    unknown = _images_with_unknown_classes(truth, match)
    scores = classification_metrics(
        found.kept,
        found.stored,
        match.boxes,
        image_ids=match.image_ids,
        classes=match.classes,
        multi_label=multi_label,
        accuracy_ids=[i for i in match.image_ids if i not in unknown],
    )
    evaluation = _evaluation(
        out,
        truth,
        match,
        0.0,
        found.thresholds,
        found.thresholds_from,
        scores.per_class,
        scores.overall,
        "not evaluated: classification",
        scores.curves,
    )
    evaluation.task = "classify-multi" if multi_label else "classify"
    evaluation.accuracy = scores.accuracy
    evaluation.accuracy_images = scores.accuracy_images
    return evaluation


def _images_with_unknown_classes(truth: GroundTruth, match: TruthMatch) -> set[str]:
    """Labeled images one of whose truth classes matches no class of the labels:
    their whole answer cannot be right, so the accuracy leaves them out."""
    unknown_rows = truth.boxes[~truth.boxes["class_name"].isin(match.class_map)]
    return {
        match.image_of[index]
        for index in set(unknown_rows["truth_image"])
        if index in match.image_of
    }


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
