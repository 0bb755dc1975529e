"""Human labels for a preview's sample: matched once, kept with the preview.

``attach_truth`` reads the truth (``tasks.truth``), pairs it with the sample's images
and stores the truth boxes of those images as ``OUT/preview/truth.parquet`` (and what
was matched in ``sample.json``). From then on every re-filtering (``preview --from``,
the review page's sliders, the approval loop) measures the shown labels against it
without the model or the truth file: ``truth_scores`` gives each class's
precision/recall/F1 at its threshold and its F1-optimal threshold
(``tasks.threshold_tuning``).

The curves are computed over the candidates after NMS at the floor: with per-class NMS
(or none) that is exactly what the batch keeps at any threshold; with agnostic NMS a
box of another class that a higher threshold drops may no longer suppress, so the
numbers are close but not exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.labels import write_parquet_atomically
from tasks.preview import (
    PreviewLayout,
    filter_candidates,
    load_record,
    read_candidates,
    read_manifest,
    save_record,
)
from tasks.settings import LabelSettings
from tasks.threshold_tuning import (
    ClassCurve,
    ThresholdChoice,
    class_curves,
    score_at,
    tune_thresholds,
)
from tasks.thresholds import Thresholds
from tasks.truth import match_truth, parse_map_options, read_truth

TRUTH_IOU = 0.5
_BOX_COLUMNS = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]


class PreviewTruth(BaseModel):
    """What the sample's truth was made of (saved in ``sample.json``)."""

    source: str
    class_map: dict[str, str] = Field(default_factory=dict)
    image_ids: list[str] = Field(description="Sample images that have truth.")
    classes: list[str] = Field(description="Our classes the truth labels.")
    classes_without_truth: list[str] = Field(default_factory=list)
    unknown_classes: dict[str, int] = Field(default_factory=dict)
    sample_without_truth: list[str] = Field(default_factory=list)
    iou: float = TRUTH_IOU


@dataclass
class TruthScore:
    """One class on the sample's labeled images: at its threshold, and at its best."""

    threshold: float
    truth: int
    labels: int
    precision: float | None
    recall: float | None
    f1: float | None
    suggested: float  # the F1-optimal threshold, or the class's own
    suggested_f1: float | None
    from_truth: bool  # False: the class keeps its threshold (see reason)
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def truth_path(out: str | Path) -> Path:
    return PreviewLayout(out).root / "truth.parquet"


def attach_truth(
    out: str | Path, truth: str, class_map: list[str] | None = None
) -> PreviewTruth:
    """Match ``truth`` to the stored preview's sample and keep it with the preview.

    Raises:
        TruthError: The truth cannot be read. MapError: a bad ``--map``.
        PreviewError: No preview under ``out``.
    """
    record = load_record(out)
    mapping = parse_map_options(class_map or [])
    ground = read_truth(truth)
    match = match_truth(
        ground,
        read_manifest(out),
        our_classes=record.settings.ontology.class_names,
        class_map=mapping,
    )
    boxes = match.boxes[_BOX_COLUMNS].reset_index(drop=True)
    write_parquet_atomically(boxes, truth_path(out))
    attached = PreviewTruth(
        source=ground.source,
        class_map=match.class_map,
        image_ids=match.image_ids,
        classes=match.classes,
        classes_without_truth=match.classes_without_truth,
        unknown_classes=match.unknown_classes,
        sample_without_truth=match.unlabeled_images,
    )
    save_record(out, record.model_copy(update={"truth": attached.model_dump()}))
    return attached


def stored_truth(out: str | Path) -> tuple[PreviewTruth, pd.DataFrame] | None:
    """The preview's truth and its boxes; None when the preview has none."""
    record = load_record(out)
    if record.truth is None or not truth_path(out).is_file():
        return None
    return PreviewTruth.model_validate(record.truth), pd.read_parquet(truth_path(out))


def truth_choices(
    out: str | Path, settings: LabelSettings
) -> dict[str, ThresholdChoice] | None:
    """Each class's F1-optimal threshold on the sample's labeled images (or its own
    threshold, with the reason); None when the preview has no truth."""
    tuned = _tuned(out, settings)
    return None if tuned is None else tuned[2]


def truth_scores(
    out: str | Path, settings: LabelSettings
) -> dict[str, TruthScore] | None:
    """Per class, P/R/F1 at ``settings``' thresholds and the suggested threshold."""
    tuned = _tuned(out, settings)
    if tuned is None:
        return None
    curves, current, choices = tuned
    scores = {}
    for name in settings.ontology.class_names:
        now = score_at(curves[name], current[name])
        choice = choices[name]
        scores[name] = TruthScore(
            threshold=current[name],
            truth=now.truth,
            labels=now.labels,
            precision=now.precision,
            recall=now.recall,
            f1=now.f1,
            suggested=choice.threshold,
            suggested_f1=choice.score.f1,
            from_truth=choice.from_truth,
            reason=choice.reason,
        )
    return scores


def _tuned(
    out: str | Path, settings: LabelSettings
) -> tuple[dict[str, ClassCurve], dict[str, float], dict[str, ThresholdChoice]] | None:
    """The stored truth's per-class curves, ``settings``' thresholds and the tuned
    choices; None when the preview has no truth."""
    found = stored_truth(out)
    if found is None:
        return None
    truth, boxes = found
    curves = _curves(out, settings, truth, boxes)
    current = settings.thresholds.for_classes(settings.ontology.class_names)
    return curves, current, tune_thresholds(curves, current)


def truth_curves_payload(out: str | Path) -> dict | None:
    """For the review page: per class, the candidates' scores and matches and the
    truth count, so the page computes P/R/F1 and the best threshold as sliders move."""
    found = stored_truth(out)
    if found is None:
        return None
    truth, boxes = found
    settings = load_record(out).settings
    curves = _curves(out, settings, truth, boxes)
    return {
        "source": truth.source,
        "images": len(truth.image_ids),
        "classes": {
            name: {
                "scores": [float(s) for s in curve.scores],
                "matched": [bool(m) for m in curve.matched],
                "truth": curve.truth,
            }
            for name, curve in curves.items()
        },
    }


def _curves(out, settings: LabelSettings, truth: PreviewTruth, boxes: pd.DataFrame):
    names = settings.ontology.class_names
    candidates = read_candidates(out)
    candidates = candidates[candidates["image_id"].isin(truth.image_ids)]
    floor = Thresholds(default=0.0, per_class={})
    kept = filter_candidates(
        candidates,
        floor,
        nms=settings.nms,
        nms_iou=settings.nms_iou,
        class_names=names,
    )
    boxes = boxes[boxes["class_name"].isin(truth.classes)]
    curves = class_curves(kept, boxes, classes=names, iou=truth.iou)
    unknown = [n for n in names if n not in truth.classes]
    for name in unknown:  # the truth does not label it: no instances to tune on
        curves[name] = type(curves[name])(curves[name].scores, curves[name].matched, 0)
    return curves


def auto_thresholds(
    out: str | Path, settings: LabelSettings
) -> tuple[Thresholds, dict[str, ThresholdChoice]]:
    """``--threshold auto``: every class at its F1-optimal threshold on the sample's
    labeled images; a class with nothing to tune on keeps its own.

    Raises:
        PreviewError: The preview has no truth (give ``--truth``).
    """
    from tasks.preview import PreviewError

    choices = truth_choices(out, settings)
    if choices is None:
        raise PreviewError(
            f"--threshold auto needs human labels: the preview in {out} has none "
            "(give --truth PATH)"
        )
    per_class = {name: choice.threshold for name, choice in choices.items()}
    return (
        Thresholds(default=settings.thresholds.default, per_class=per_class),
        choices,
    )


attach_truth_task = task(attach_truth, name="attach-truth", cache_policy=NO_CACHE)
