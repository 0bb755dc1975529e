"""Per-class thresholds from human labels: the F1-optimal threshold of each class.

The inputs are plain: per class, the scores of its candidates, whether each one matched
a truth box (at the evaluation's IoU, with its greedy matching: labels by score take
the unmatched truth box they overlap most), and how many truth boxes the class has.
Greedy matching by score means a candidate's match depends only on higher-scoring
candidates, so one matching of every candidate answers every threshold: keeping the
candidates scoring at least ``t`` keeps exactly the matches among them.

Ties in F1 go to the higher threshold (fewer labels for the same score). A class with
no truth instance, no candidate, or no candidate that matches keeps its threshold, and
the choice says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.evaluation_metrics import BOX_COLUMNS, greedy_match_flags


@dataclass(frozen=True)
class ClassCurve:
    """One class's candidates: scores, whether each matched truth, truth instances."""

    scores: np.ndarray
    matched: np.ndarray
    truth: int


@dataclass(frozen=True)
class ClassScore:
    """A class's precision, recall and F1 at one threshold (None where undefined)."""

    threshold: float
    truth: int
    labels: int
    tp: int
    precision: float | None
    recall: float | None
    f1: float | None


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold a class gets: the F1-optimal one (``from_truth``), or its own."""

    threshold: float
    from_truth: bool
    score: ClassScore
    reason: str = ""  # why the class kept its threshold


def match_flags(
    predictions: pd.DataFrame, truth: pd.DataFrame, *, iou: float = 0.5
) -> np.ndarray:
    """Whether each row of ``predictions`` matches a truth box of its class and image.

    ``tasks.evaluation_metrics.count_matches``' matching: per image and class, labels
    by score (highest first, ties in table order) take the unmatched truth box they
    overlap most, if at least ``iou``. Aligned with ``predictions``' rows.
    """
    flags = np.zeros(len(predictions), dtype=bool)
    if predictions.empty:
        return flags
    rows = predictions.reset_index(drop=True)
    grouped_truth = {
        key: group[BOX_COLUMNS].to_numpy(dtype=float)
        for key, group in truth.groupby(["image_id", "class_name"], sort=False)
    }
    for key, group in rows.groupby(["image_id", "class_name"], sort=False):
        boxes = grouped_truth.get(key)
        if boxes is None:
            continue
        order = np.argsort(-group["confidence"].to_numpy(), kind="mergesort")
        ordered = group.index.to_numpy()[order]
        flags[ordered] = greedy_match_flags(
            rows.loc[ordered, BOX_COLUMNS].to_numpy(float), boxes, iou
        )
    return flags


def class_curves(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    classes: Sequence[str],
    iou: float = 0.5,
) -> dict[str, ClassCurve]:
    """Every class's curve from candidates and truth boxes of the same images."""
    flags = match_flags(predictions, truth, iou=iou)
    names = predictions["class_name"].to_numpy()
    scores = predictions["confidence"].to_numpy(dtype=float)
    counts = truth["class_name"].value_counts()
    return {
        name: ClassCurve(
            scores=scores[names == name],
            matched=flags[names == name],
            truth=int(counts.get(name, 0)),
        )
        for name in classes
    }


def score_at(curve: ClassCurve, threshold: float) -> ClassScore:
    """P/R/F1 of the candidates scoring at least ``threshold`` (== stays)."""
    kept = curve.scores >= threshold
    labels, tp = int(kept.sum()), int(curve.matched[kept].sum())
    fp, fn = labels - tp, curve.truth - tp
    return ClassScore(
        threshold=float(threshold),
        truth=curve.truth,
        labels=labels,
        tp=tp,
        precision=tp / labels if labels else None,
        recall=tp / curve.truth if curve.truth else None,
        f1=2 * tp / (2 * tp + fp + fn) if curve.truth or labels else None,
    )


def best_threshold(curve: ClassCurve, current: float) -> ThresholdChoice:
    """The F1-optimal threshold among the candidates' scores (ties: the higher one);
    ``current`` when F1 cannot choose (no truth, no candidate, no match)."""
    if curve.truth == 0:
        return _kept(curve, current, "no labeled instances")
    if not curve.matched.any():
        reason = "no candidate matches" if len(curve.scores) else "no candidates"
        return _kept(curve, current, f"{reason} its labeled instances")
    order = np.argsort(-curve.scores, kind="mergesort")
    scores, matched = curve.scores[order], curve.matched[order]
    tp = np.cumsum(matched)
    labels = np.arange(1, len(scores) + 1)
    # Keeping everything down to a score keeps its ties too: the last of each run.
    last = np.r_[scores[1:] != scores[:-1], True]
    f1 = 2 * tp[last] / (labels[last] + curve.truth)
    best = int(np.flatnonzero(f1 == f1.max())[0])  # first: the highest threshold
    threshold = float(scores[last][best])
    return ThresholdChoice(threshold, True, score_at(curve, threshold))


def tune_thresholds(
    curves: Mapping[str, ClassCurve], current: Mapping[str, float]
) -> dict[str, ThresholdChoice]:
    """Each class's choice (see ``best_threshold``), in ``current``'s order."""
    return {
        name: best_threshold(
            curves.get(name, ClassCurve(np.array([]), np.array([], bool), 0)), value
        )
        for name, value in current.items()
    }


def _kept(curve: ClassCurve, current: float, reason: str) -> ThresholdChoice:
    return ThresholdChoice(current, False, score_at(curve, current), reason)
