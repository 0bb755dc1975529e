"""Thresholds from human labels: the F1-optimal threshold per class, ties to the higher
one, classes with nothing to tune on kept; and on a labeled set split in two, per-class
thresholds tuned on one half do at least as well on the other half as the best single
threshold chosen on the first half."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.evaluation_metrics import count_matches
from tasks.threshold_tuning import (
    ClassCurve,
    best_threshold,
    class_curves,
    match_flags,
    score_at,
    tune_thresholds,
)


def _curve(scores, matched, truth):
    return ClassCurve(np.array(scores, float), np.array(matched, bool), truth)


@pytest.mark.parametrize(
    ("scores", "matched", "truth", "expected", "f1"),
    [
        # keep 0.9 and 0.8 (2 of 3 found, no false positive): F1 4/5
        ([0.9, 0.8, 0.3], [True, True, False], 3, 0.8, 4 / 5),
        # 0.9 alone: F1 2/3; down to 0.5: 2 tp of 3 labels, 2 truth: F1 4/5
        ([0.9, 0.7, 0.5], [True, False, True], 2, 0.5, 4 / 5),
        # 0.9 keeps 1 tp (F1 1); 0.2 adds a false positive
        ([0.9, 0.2], [True, False], 1, 0.9, 1.0),
        # a tie of F1: 2/3 at 0.8 (1 tp of 1) and at 0.4 (2 tp of 4): the higher wins
        ([0.8, 0.6, 0.5, 0.4], [True, False, False, True], 2, 0.8, 2 / 3),
        # equal scores go together: 0.7 keeps both of its candidates
        ([0.7, 0.7, 0.2], [True, True, False], 2, 0.7, 1.0),
    ],
)
def test_the_f1_optimal_threshold_ties_to_the_higher_one(
    scores, matched, truth, expected, f1
):
    choice = best_threshold(_curve(scores, matched, truth), current=0.35)
    assert choice.from_truth
    assert choice.threshold == pytest.approx(expected)
    assert choice.score.f1 == pytest.approx(f1)
    # no other candidate score does better, and none as well above it
    for score in scores:
        other = score_at(_curve(scores, matched, truth), score).f1
        assert other <= choice.score.f1 + 1e-12
        if score > expected:
            assert other < choice.score.f1


def test_a_class_without_labeled_instances_keeps_its_threshold_and_says_why():
    choices = tune_thresholds(
        {
            "cat": _curve([0.9, 0.4], [True, False], 1),
            "dog": _curve([0.8, 0.6], [False, False], 0),
            "bird": _curve([0.5], [False], 2),
        },
        {"cat": 0.3, "dog": 0.45, "bird": 0.2, "fish": 0.6},
    )
    assert list(choices) == ["cat", "dog", "bird", "fish"]
    assert choices["cat"].from_truth and choices["cat"].threshold == 0.9
    kept = {name: c for name, c in choices.items() if not c.from_truth}
    assert {name: c.threshold for name, c in kept.items()} == {
        "dog": 0.45,
        "bird": 0.2,
        "fish": 0.6,
    }
    assert kept["dog"].reason == "no labeled instances"
    assert kept["fish"].reason == "no labeled instances"
    assert kept["bird"].reason == "no candidate matches its labeled instances"


def _box(x: float, size: float = 10.0) -> tuple[float, float, float, float]:
    return (x, 0.0, x + size, size)


def _labeled_set(seed: int, images: int):
    """Candidates with known scores and human labels for two classes that need
    different thresholds: a cat candidate is right when it scores above 0.6, a dog
    candidate when it scores above 0.25 (each right one has its truth box)."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for image in range(images):
        image_id = f"img{image}"
        for k, (name, cut) in enumerate([("cat", 0.6), ("dog", 0.25)] * 3):
            score = float(rng.uniform(0.05, 1.0))
            box = _box(20.0 * k)
            rows.append((image_id, name, score, *box))
            if score > cut:
                truth.append((image_id, name, *box))
        # a missed object: lowers recall whatever the threshold
        if image % 3 == 0:
            truth.append((image_id, "dog", *_box(500.0)))
    columns = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    candidates = pd.DataFrame(rows, columns=["image_id", "class_name", "confidence",
                                             *columns[2:]])  # fmt: skip
    return candidates, pd.DataFrame(truth, columns=columns)


def _f1_on(candidates, truth, thresholds: dict[str, float]) -> float:
    """F1 over both classes, by the evaluation's own counting."""
    limits = candidates["class_name"].map(thresholds).to_numpy(float)
    kept = candidates[candidates["confidence"].to_numpy() >= limits]
    _, overall = count_matches(kept, truth, classes=["cat", "dog"], iou=0.5)
    return overall.f1


def test_thresholds_tuned_on_one_half_beat_one_global_threshold_on_the_other():
    candidates, truth = _labeled_set(seed=7, images=40)
    first = candidates["image_id"].isin([f"img{i}" for i in range(20)])
    half_a, half_b = candidates[first], candidates[~first]
    truth_a = truth[truth["image_id"].isin(half_a["image_id"])]
    truth_b = truth[truth["image_id"].isin(half_b["image_id"])]

    curves = class_curves(half_a, truth_a, classes=["cat", "dog"])
    tuned = {
        name: choice.threshold
        for name, choice in tune_thresholds(curves, {"cat": 0.35, "dog": 0.35}).items()
    }
    assert tuned["cat"] > 0.6 > 0.25 < tuned["dog"] < 0.6
    # the best single threshold on half A, over every candidate score of half A
    global_best = max(
        sorted(set(half_a["confidence"]), reverse=True),
        key=lambda t: _f1_on(half_a, truth_a, {"cat": t, "dog": t}),
    )
    tuned_f1 = _f1_on(half_b, truth_b, tuned)
    global_f1 = _f1_on(half_b, truth_b, {"cat": global_best, "dog": global_best})
    assert tuned_f1 >= global_f1
    assert tuned_f1 > global_f1  # here the classes need different thresholds


def test_matches_agree_with_the_evaluation_at_every_threshold():
    candidates, truth = _labeled_set(seed=3, images=12)
    # overlapping duplicates: only the higher-scoring one may take the truth box
    duplicates = candidates.assign(confidence=candidates["confidence"] * 0.9)
    candidates = pd.concat([candidates, duplicates], ignore_index=True)
    flags = match_flags(candidates, truth)
    assert flags.sum() == len(truth) - truth["x_min"].eq(500.0).sum()
    curves = class_curves(candidates, truth, classes=["cat", "dog"])
    checked = 0
    for threshold in (0.1, 0.3, 0.5, 0.7, 0.9):
        kept = candidates[candidates["confidence"] >= threshold]
        per_class, _ = count_matches(kept, truth, classes=["cat", "dog"], iou=0.5)
        for name, metrics in per_class.items():
            ours = score_at(curves[name], threshold)
            assert (ours.truth, ours.labels, ours.tp) == (
                metrics.truth,
                metrics.labels,
                metrics.tp,
            )
            checked += 1
    assert checked == 10
