"""Classification metrics of labels against truth classes, both already paired by image
and class: accuracy, per-class precision/recall/F1 and, for multi-label, per-class
average precision.

Kept apart from the detection metrics (``tasks.evaluation_metrics``): nothing here
overlaps boxes; an image's answer is a set of classes. Definitions (those of
scikit-learn, which the tests check against):
- Single-label: an image's answer is its best label at the thresholds, or none.
- Accuracy: the share of images whose set of labels equals its set of truth classes
  (single-label: the right class; multi-label: scikit-learn's subset accuracy).
- Per class, over the evaluated images: TP, FP, FN of "has the class"; ``overall``
  sums them (micro average).
- Multi-label AP per class: scikit-learn's ``average_precision_score`` (the sum over
  score thresholds of the recall step times the precision there) over every stored
  label's score, the thresholds not applied; an image without a label of the class
  scores 0 (labels below the run's thresholds are not stored). ``overall.ap`` is the
  mean over classes with truth (macro).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasks.evaluation_metrics import ClassMetrics, scores_from_counts


@dataclass
class ClassificationScores:
    """What ``classification_metrics`` measured."""

    per_class: dict[str, ClassMetrics]
    overall: ClassMetrics
    accuracy: float | None
    accuracy_images: int
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def answers(
    kept: pd.DataFrame, *, image_ids: Sequence[str], multi_label: bool
) -> dict[str, set[str]]:
    """Each image's classes at the thresholds: all of them (multi-label) or the best
    one (single-label; ties: the first row)."""
    found: dict[str, set[str]] = {image_id: set() for image_id in image_ids}
    rows = kept[kept["image_id"].isin(found)]
    if not multi_label:
        order = np.argsort(-rows["confidence"].to_numpy(dtype=float), kind="stable")
        rows = rows.iloc[order].drop_duplicates("image_id")
    for image_id, name in zip(rows["image_id"], rows["class_name"], strict=True):
        found[image_id].add(name)
    return found


def classification_metrics(
    kept: pd.DataFrame,
    stored: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    image_ids: Sequence[str],
    classes: Sequence[str],
    multi_label: bool,
    accuracy_ids: Sequence[str] | None = None,
) -> ClassificationScores:
    """Score the labels ``kept`` at the thresholds (and, for AP, every ``stored`` one)
    against ``truth`` (``image_id``, ``class_name`` rows) on ``image_ids``.

    ``accuracy_ids``: the images whose whole truth is known (default: all); an image
    with a truth class the labels do not know is left out of the accuracy.
    """
    predicted = answers(kept, image_ids=image_ids, multi_label=multi_label)
    expected: dict[str, set[str]] = {image_id: set() for image_id in image_ids}
    for image_id, name in zip(truth["image_id"], truth["class_name"], strict=True):
        if image_id in expected:
            expected[image_id].add(name)
    per_class = {}
    for name in classes:
        has = np.array([name in expected[i] for i in image_ids], dtype=bool)
        said = np.array([name in predicted[i] for i in image_ids], dtype=bool)
        per_class[name] = scores_from_counts(
            int(has.sum()), int(said.sum()), int((has & said).sum())
        )
    overall = scores_from_counts(
        sum(m.truth for m in per_class.values()),
        sum(m.labels for m in per_class.values()),
        sum(m.tp for m in per_class.values()),
    )
    counted = list(image_ids if accuracy_ids is None else accuracy_ids)
    right = sum(predicted[i] == expected[i] for i in counted)
    scores = ClassificationScores(
        per_class=per_class,
        overall=overall,
        accuracy=right / len(counted) if counted else None,
        accuracy_images=len(counted),
    )
    if multi_label:
        _add_average_precision(scores, stored, expected, image_ids)
    return scores


def _add_average_precision(
    scores: ClassificationScores,
    stored: pd.DataFrame,
    expected: dict[str, set[str]],
    image_ids: Sequence[str],
) -> None:
    best = stored.groupby(["image_id", "class_name"])["confidence"].max().to_dict()
    for name, metrics in scores.per_class.items():
        y_true = np.array([name in expected[i] for i in image_ids], dtype=bool)
        if not y_true.any():
            continue
        y_score = np.array([best.get((i, name), 0.0) for i in image_ids], dtype=float)
        metrics.ap, recall, precision = average_precision(y_true, y_score)
        scores.curves[name] = {"recall": recall, "precision": precision}
    aps = [m.ap for m in scores.per_class.values() if m.ap is not None]
    scores.overall.ap = float(np.mean(aps)) if aps else None


def average_precision(
    y_true: np.ndarray, y_score: np.ndarray
) -> tuple[float, list[float], list[float]]:
    """AP as the sum over distinct score thresholds (highest first) of the recall
    gained times the precision reached; and the (recall, precision) points."""
    order = np.argsort(-y_score, kind="mergesort")
    hits, sorted_scores = y_true[order], y_score[order]
    last_of_tie = np.r_[np.diff(sorted_scores) != 0, True]
    tp = np.cumsum(hits)[last_of_tie]
    taken = np.arange(1, len(hits) + 1)[last_of_tie]
    precision = tp / taken
    recall = tp / y_true.sum()
    gained = np.diff(np.r_[0.0, recall])
    return (
        float(np.sum(gained * precision)),
        [float(r) for r in recall],
        [float(p) for p in precision],
    )
