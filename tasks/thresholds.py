"""Per-class confidence thresholds and NMS, applied after the model.

The model is always run at the lowest threshold any class needs (the floor) and every
candidate above it is kept; per-class thresholds and NMS then filter those candidates.
The same filter serves batch labeling and the preview's instant re-filtering, so what a
preview shows at a threshold is exactly what the batch will label.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import supervision as sv
from pydantic import BaseModel, ConfigDict, Field, field_validator

from model_loaders.ontology import Ontology

NmsMode = Literal["none", "class", "agnostic"]
DEFAULT_THRESHOLD = 0.35


class ThresholdError(ValueError):
    """A threshold option the user must fix; the message says which and why."""


class Thresholds(BaseModel):
    """A default confidence threshold and per-class overrides, each in [0, 1]."""

    model_config = ConfigDict(frozen=True)

    default: float = Field(DEFAULT_THRESHOLD, ge=0.0, le=1.0)
    per_class: dict[str, float] = Field(default_factory=dict)

    @field_validator("per_class")
    @classmethod
    def _in_unit_range(cls, per_class: dict[str, float]) -> dict[str, float]:
        for name, value in per_class.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"threshold for {name!r} is {value}: must be in [0, 1]"
                )
        return per_class

    def __hash__(self) -> int:
        return hash((self.default, tuple(sorted(self.per_class.items()))))

    def for_class(self, name: str) -> float:
        return self.per_class.get(name, self.default)

    def for_classes(self, names: Iterable[str]) -> dict[str, float]:
        """Each class's threshold written out: how approved thresholds are shown and
        saved, so a later change of the default never changes an approved class."""
        return {name: self.for_class(name) for name in names}

    def floor(self, ontology: Ontology) -> float:
        """The lowest threshold of any class: what the model must be run at."""
        return min(self.for_class(name) for name in ontology.class_names)

    def check_classes(self, ontology: Ontology) -> None:
        """Refuse thresholds for classes the ontology does not have (likely a typo)."""
        unknown = sorted(set(self.per_class) - set(ontology.class_names))
        if unknown:
            raise ThresholdError(
                f"--threshold for unknown class(es) {unknown}; "
                f"classes are {ontology.class_names}"
            )


def parse_threshold_options(options: list[str]) -> Thresholds:
    """Parse repeated ``--threshold 0.35`` (default) / ``--threshold name=0.5``
    options."""
    default = DEFAULT_THRESHOLD
    per_class: dict[str, float] = {}
    for option in options:
        name, has_name, value_text = option.rpartition("=")
        name = name.strip()
        if has_name and not name:
            raise ThresholdError(
                f"--threshold {option!r}: missing class name before '='"
            )
        try:
            value = float(value_text)
        except ValueError:
            raise ThresholdError(
                f"--threshold {option!r}: {value_text.strip()!r} is not a number"
            ) from None
        if not 0.0 <= value <= 1.0:
            raise ThresholdError(f"--threshold {option!r}: must be between 0 and 1")
        if has_name:
            per_class[name] = value
        else:
            default = value
    return Thresholds(default=default, per_class=per_class)


def apply_thresholds(
    detections: sv.Detections, thresholds: Thresholds, class_names: list[str]
) -> sv.Detections:
    """Keep detections scoring at least their class's threshold (score == threshold
    stays)."""
    if len(detections) == 0:
        return detections
    limits = np.array([thresholds.for_class(name) for name in class_names])
    return detections[detections.confidence >= limits[detections.class_id]]


def apply_nms(detections: sv.Detections, mode: NmsMode, iou: float) -> sv.Detections:
    """Non-maximum suppression per class, across classes, or not at all."""
    if mode == "none" or len(detections) == 0:
        return detections
    return detections.with_nms(threshold=iou, class_agnostic=mode == "agnostic")


def keep_labels(
    detections: sv.Detections,
    thresholds: Thresholds,
    class_names: list[str],
    *,
    nms: NmsMode,
    nms_iou: float,
) -> sv.Detections:
    """The batch's filter, shared by the preview: per-class thresholds, then NMS."""
    detections = apply_thresholds(detections, thresholds, class_names)
    return apply_nms(detections, nms, nms_iou)
