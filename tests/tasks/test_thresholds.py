"""Per-class thresholds and NMS: what the batch keeps, including the edges."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

from model_loaders.ontology import Ontology
from tasks.thresholds import (
    ThresholdError,
    Thresholds,
    apply_nms,
    apply_thresholds,
    parse_threshold_options,
)


@pytest.mark.parametrize(
    ("options", "default", "per_class"),
    [
        ([], 0.35, {}),
        (["0.5"], 0.5, {}),
        (["person=0.6"], 0.35, {"person": 0.6}),
        (
            ["0.2", "aluminum can=1", "person=0"],
            0.2,
            {"aluminum can": 1.0, "person": 0.0},
        ),
        (["a=b=0.3"], 0.35, {"a=b": 0.3}),
    ],
)
def test_threshold_options_parse(options, default, per_class):
    thresholds = parse_threshold_options(options)
    assert thresholds.default == default
    assert thresholds.per_class == per_class


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("high", "not a number"),
        ("person=", "not a number"),
        ("=0.3", "missing class name"),
        ("1.5", "between 0 and 1"),
        ("person=-0.1", "between 0 and 1"),
    ],
)
def test_bad_threshold_options_are_refused(option, message):
    with pytest.raises(ThresholdError, match=message):
        parse_threshold_options([option])


def test_thresholds_for_unknown_classes_are_refused():
    ontology = Ontology.from_class_options(["person", "can"])
    with pytest.raises(ThresholdError, match="unknown class.*'persn'"):
        parse_threshold_options(["persn=0.5"]).check_classes(ontology)


def test_floor_is_the_lowest_class_threshold():
    ontology = Ontology.from_class_options(["person", "can"])
    assert Thresholds(default=0.4, per_class={"can": 0.1}).floor(ontology) == 0.1
    assert Thresholds(default=0.4, per_class={"can": 0.9}).floor(ontology) == 0.4


def _detections(scores, class_ids, boxes=None):
    n = len(scores)
    if boxes is None:
        boxes = [[10 * i, 0, 10 * i + 5, 5] for i in range(n)]
    return sv.Detections(
        xyxy=np.array(boxes, dtype=np.float32),
        confidence=np.array(scores, dtype=np.float32),
        class_id=np.array(class_ids),
        data={"class_name": np.array(["x"] * n), "prompt": np.array(["x"] * n)},
    )


@pytest.mark.parametrize(
    ("thresholds", "kept"),
    [
        (
            Thresholds(default=0.5),
            [0.5, 0.9, 0.7],
        ),  # a score equal to the threshold stays
        (Thresholds(default=0.5, per_class={"can": 0.8}), [0.5, 0.9]),
        (Thresholds(default=0.0), [0.2, 0.5, 0.9, 0.7]),
        (Thresholds(default=1.0), []),
    ],
)
def test_per_class_thresholds_filter_candidates(thresholds, kept):
    scores = np.float32([0.2, 0.5, 0.9, 0.7])
    detections = _detections(scores, [0, 0, 0, 1])
    result = apply_thresholds(detections, thresholds, ["person", "can"])
    assert result.confidence.tolist() == pytest.approx(kept)


def test_nms_per_class_keeps_overlaps_of_different_classes():
    box = [0, 0, 10, 10]
    detections = _detections([0.9, 0.8, 0.7], [0, 0, 1], boxes=[box, box, box])
    assert sorted(apply_nms(detections, "class", 0.5).class_id.tolist()) == [0, 1]
    assert apply_nms(detections, "agnostic", 0.5).confidence.tolist() == pytest.approx(
        [0.9]
    )
    assert len(apply_nms(detections, "none", 0.5)) == 3
