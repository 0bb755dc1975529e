"""Label quality: a Great Expectations suite on the label table, a report, a policy.

The label table is joined with what its checks need (each class's approved threshold,
the ontology's ids, a near-duplicate flag, mask areas and extents, the image manifest)
and validated by a GX suite in an ephemeral context. Every check names the image ids of
its failing rows. The result is plain data (``QualityResult``), rendered to
``OUT/quality.md`` and a markdown artifact; the policy decides whether failures only
warn or fail the run.

Great Expectations is imported inside the functions that use it: importing it takes
seconds, and most commands never validate anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from tasks.labels import OutputLayout, read_images, read_labels
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds

QualityPolicy = Literal["warn", "fail"]
QUALITY_REPORT = "quality.md"
QUALITY_JSON = "quality.json"
MISSING_ID = "<missing image_id>"
REQUIRED_COLUMNS = (
    "image_id",
    "class_name",
    "class_id",
    "confidence",
    "width",
    "height",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
)
_MAX_LISTED = 50  # failing images listed per check in the markdown (JSON has them all)


class QualityRules(BaseModel):
    """The tunable limits of the checks (the defaults suit Grounding DINO output)."""

    model_config = ConfigDict(frozen=True)

    duplicate_iou: float = Field(
        0.9, gt=0.0, le=1.0, description="IoU above which same-class boxes are twins."
    )
    min_box_px: float = Field(
        1.0, ge=0.0, description="A box narrower or lower than this is empty."
    )
    edge_tolerance_px: float = Field(
        0.0, ge=0.0, description="How far a box may reach past the image border."
    )
    mask_tolerance_px: float = Field(
        1.0, ge=0.0, description="How far a mask may reach past its box."
    )
    require_masks: bool = Field(
        False, description="Every label must have a mask (segmentation runs)."
    )
    max_unlabeled_fraction: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Fail if more readable images have no labels; None: only list.",
    )


@dataclass(frozen=True)
class CheckResult:
    """One check: did it pass, how many rows failed, which images they belong to."""

    name: str
    description: str
    success: bool
    failing_rows: int = 0
    failing_image_ids: list[str] = field(default_factory=list)
    blocking: bool = True  # False: reported, never fails the run
    error: str | None = None  # GX could not evaluate it (counts as a failure)


@dataclass
class QualityResult:
    """Everything the suite found, as plain data (JSON-ready via ``to_dict``)."""

    checks: list[CheckResult]
    labels: int
    images: int
    per_class: dict[str, int]
    unlabeled_image_ids: list[str]
    sources: dict[str, str] = field(default_factory=dict)  # image id -> file, if known

    @property
    def success(self) -> bool:
        return all(check.success for check in self.checks if check.blocking)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.blocking and not c.success]

    def check(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["success"] = self.success
        return data


class QualityCheckFailed(RuntimeError):
    """Policy 'fail' and a blocking check failed (the report is already written)."""

    def __init__(self, result: QualityResult, report: Path | None = None) -> None:
        self.result = result
        self.report = report
        failed = ", ".join(
            f"{c.name} ({len(c.failing_image_ids)} image(s))" for c in result.failed
        )
        where = f"; see {report}" if report else ""
        super().__init__(f"label quality checks failed: {failed}{where}")

    def __reduce__(self):
        return (QualityCheckFailed, (self.result, self.report))


@dataclass(frozen=True)
class _Check:
    name: str
    description: str
    table: Literal["labels", "images"]
    expectations: tuple[Any, ...]
    blocking: bool = True


def run_quality_checks(
    labels: pd.DataFrame,
    images: pd.DataFrame | None = None,
    *,
    class_names: Sequence[str],
    thresholds: Thresholds,
    rules: QualityRules | None = None,
) -> QualityResult:
    """Validate the label table (and image manifest) with a GX suite.

    Args:
        labels: The label table (``read_labels``). Masks (``mask``: COCO RLE as JSON
            text or a dict) are checked when any row has one or ``rules.require_masks``;
            rows without a mask are skipped unless masks are required.
        images: The image manifest (``read_images``), for images with no labels;
            None skips that check.
        class_names: The ontology's classes, in class-id order.
        thresholds: The approved thresholds: a label must score at least its class's.
        rules: Tunable limits.
    """
    rules = rules or QualityRules()
    prepared = _prepare_labels(labels, class_names, thresholds, rules)
    manifest = _prepare_images(images, labels) if images is not None else None
    checks = _checks(
        has_masks="mask_area" in prepared.columns,
        has_images=manifest is not None,
        rules=rules,
        class_names=class_names,
    )
    results = _validate(checks, {"labels": prepared, "images": manifest})
    counts = prepared["class_name"].value_counts()
    per_class = {name: int(counts.get(name, 0)) for name in class_names}
    per_class.update(
        {
            str(k): int(v)
            for k, v in counts.items()
            if k not in per_class and pd.notna(k)
        }
    )
    by_name = {result.name: result for result in results}
    unlabeled = (
        by_name["images_have_labels"].failing_image_ids if manifest is not None else []
    )
    named = {i for result in results for i in result.failing_image_ids}
    return QualityResult(
        checks=results,
        labels=len(prepared),
        images=len(manifest) if manifest is not None else labels["image_id"].nunique(),
        per_class=per_class,
        unlabeled_image_ids=unlabeled,
        sources=_sources(named, labels, images),
    )


def _prepare_labels(
    labels: pd.DataFrame,
    class_names: Sequence[str],
    thresholds: Thresholds,
    rules: QualityRules,
) -> pd.DataFrame:
    """The label table plus the derived columns its expectations compare."""
    frame = labels.reset_index(drop=True).copy()
    class_ids = {name: index for index, name in enumerate(class_names)}
    frame["has_required_values"] = frame[list(REQUIRED_COLUMNS)].notna().all(axis=1)
    frame["threshold"] = [
        thresholds.for_class(str(name)) for name in frame["class_name"].tolist()
    ]
    frame["ontology_class_id"] = frame["class_name"].map(class_ids).astype("float64")
    frame["class_id_float"] = frame["class_id"].astype("float64")
    frame["box_width"] = frame["x_max"] - frame["x_min"]
    frame["box_height"] = frame["y_max"] - frame["y_min"]
    frame["x_limit"] = frame["width"] + rules.edge_tolerance_px
    frame["y_limit"] = frame["height"] + rules.edge_tolerance_px
    frame["near_duplicate"] = near_duplicate_flags(frame, rules.duplicate_iou)
    if "mask" in frame.columns and (rules.require_masks or frame["mask"].notna().any()):
        area, inside = _mask_measures(
            frame, rules.mask_tolerance_px, require=rules.require_masks
        )
        frame["mask_area"] = pd.array(area, dtype="Float64")
        frame["mask_inside_box"] = pd.array(inside, dtype="boolean")
    return frame


def _prepare_images(images: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Readable images of the manifest, each with whether it has any label."""
    readable = images[images["skipped_reason"].isna()].reset_index(drop=True)
    labeled = set(labels["image_id"].dropna())
    return pd.DataFrame(
        {
            "image_id": readable["image_id"].astype(str),
            "has_labels": readable["image_id"].isin(labeled).astype(bool),
        }
    )


def near_duplicate_flags(labels: pd.DataFrame, iou_threshold: float) -> np.ndarray:
    """True for a box that overlaps a same-class box of its image with IoU above the
    threshold and scores no higher (the one NMS would drop; ties flag the later row)."""
    flags = np.zeros(len(labels), dtype=bool)
    if len(labels) < 2:
        return flags
    keys = labels["image_id"].astype(str) + "\0" + labels["class_name"].astype(str)
    order = np.argsort(keys.to_numpy(), kind="stable")
    sorted_keys = keys.to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(order)]
    boxes = labels[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float64)
    scores = labels["confidence"].to_numpy(dtype=np.float64)
    for start, end in zip(starts, ends, strict=True):
        if end - start < 2:
            continue
        rows = order[start:end]
        iou = _iou_matrix(boxes[rows])
        first, second = np.nonzero(np.triu(iou > iou_threshold, k=1))
        for a, b in zip(rows[first], rows[second], strict=True):
            flags[b if scores[a] >= scores[b] else a] = True
    return flags


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    top_left = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    union = area[:, None] + area[None, :] - overlap
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, overlap / union, 0.0)


def _mask_measures(
    frame: pd.DataFrame, tolerance: float, *, require: bool
) -> tuple[list, list]:
    """Per row: the mask's area in pixels, and whether it has the image's size and lies
    within its box (give or take ``tolerance`` pixels). A row without a mask gets None
    (not checked) unless masks are required; an unreadable mask has area 0."""
    from pycocotools import mask as mask_utils

    areas: list[float | None] = []
    inside: list[bool | None] = []
    for row in frame[
        ["mask", "width", "height", "x_min", "y_min", "x_max", "y_max"]
    ].itertuples(index=False):
        if _missing(row.mask):
            areas.append(0.0 if require else None)
            inside.append(None)  # reported as empty (when required), not twice
            continue
        rle = _as_rle(row.mask, mask_utils)
        if rle is None:
            areas.append(0.0)
            inside.append(None)
            continue
        areas.append(float(mask_utils.area(rle)))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        right, bottom = x + w, y + h
        size_ok = list(rle["size"]) == [int(row.height), int(row.width)]
        inside.append(
            bool(
                size_ok
                and (w == 0 or x >= np.floor(row.x_min) - tolerance)
                and (w == 0 or right <= np.ceil(row.x_max) + tolerance)
                and (h == 0 or y >= np.floor(row.y_min) - tolerance)
                and (h == 0 or bottom <= np.ceil(row.y_max) + tolerance)
            )
        )
    return areas, inside


def _as_rle(value: Any, mask_utils: Any) -> dict | None:
    """A compressed COCO RLE from a dict or its JSON text; None if missing or bad."""
    try:
        if isinstance(value, str | bytes):
            value = json.loads(value)
        size = [int(v) for v in value["size"]]
        counts = value["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            return mask_utils.frPyObjects({"size": size, "counts": counts}, *size)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        rle = {"size": size, "counts": counts}
        mask_utils.area(rle)  # validates the counts
        return rle
    except Exception:  # noqa: BLE001 - any unreadable mask is the finding itself
        return None


def _checks(
    *,
    has_masks: bool,
    has_images: bool,
    rules: QualityRules,
    class_names: Sequence[str],
) -> list[_Check]:
    """The suite, as (GX expectation class name, arguments) pairs per check."""

    def between(column: str, low: float | None, high: float | None = None):
        return (
            "ExpectColumnValuesToBeBetween",
            {"column": column, "min_value": low, "max_value": high},
        )

    def at_least(column_a: str, column_b: str, *, or_equal: bool):
        return (
            "ExpectColumnPairValuesAToBeGreaterThanB",
            {
                "column_A": column_a,
                "column_B": column_b,
                "or_equal": or_equal,
                # A missing value is required_values' finding only.
                "ignore_row_if": "either_value_is_missing",
            },
        )

    def only(column: str, values: Iterable, mostly: float = 1.0):
        return (
            "ExpectColumnValuesToBeInSet",
            {"column": column, "value_set": list(values), "mostly": mostly},
        )

    tol = rules.edge_tolerance_px
    checks = [
        _Check(
            "required_values",
            f"no missing values in {', '.join(REQUIRED_COLUMNS)}",
            "labels",
            # One flag for all columns: a GX expectation per column costs ~15 ms each.
            (only("has_required_values", [True]),),
        ),
        _Check(
            "box_inside_image",
            "boxes lie inside their image (0 <= x <= width, 0 <= y <= height)",
            "labels",
            (
                between("x_min", -tol),
                between("y_min", -tol),
                at_least("x_limit", "x_max", or_equal=True),
                at_least("y_limit", "y_max", or_equal=True),
            ),
        ),
        _Check(
            "box_ordered",
            "x_max > x_min and y_max > y_min",
            "labels",
            (
                at_least("x_max", "x_min", or_equal=False),
                at_least("y_max", "y_min", or_equal=False),
            ),
        ),
        _Check(
            "box_not_empty",
            f"boxes are at least {rules.min_box_px:g} px wide and high",
            "labels",
            (
                between("box_width", rules.min_box_px),
                between("box_height", rules.min_box_px),
            ),
        ),
        _Check(
            "confidence_in_range",
            "confidence is in [approved threshold of its class, 1]",
            "labels",
            (
                between("confidence", 0.0, 1.0),
                at_least("confidence", "threshold", or_equal=True),
            ),
        ),
        _Check(
            "class_in_ontology",
            "class names are classes of the ontology",
            "labels",
            (only("class_name", class_names),),
        ),
        _Check(
            "class_id_matches_name",
            "class_id is the ontology index of class_name",
            "labels",
            (
                (
                    "ExpectColumnPairValuesToBeEqual",
                    {
                        "column_A": "class_id_float",
                        "column_B": "ontology_class_id",
                        # An unknown class is class_in_ontology's finding only.
                        "ignore_row_if": "either_value_is_missing",
                    },
                ),
            ),
        ),
        _Check(
            "no_near_duplicates",
            f"no two boxes of one class in an image overlap with IoU > "
            f"{rules.duplicate_iou:g}",
            "labels",
            (only("near_duplicate", [False]),),
        ),
    ]
    if has_masks:
        checks += [
            _Check(
                "mask_not_empty",
                "masks are present, readable and cover at least one pixel",
                "labels",
                (between("mask_area", 1),),
            ),
            _Check(
                "mask_inside_box",
                "masks have their image's size and lie inside their box",
                "labels",
                (only("mask_inside_box", [True]),),
            ),
        ]
    if has_images:
        limit = rules.max_unlabeled_fraction
        checks.append(
            _Check(
                "images_have_labels",
                "readable images have at least one label"
                + (f" (at most {limit:.0%} without)" if limit is not None else ""),
                "images",
                (only("has_labels", [True], mostly=1.0 - (limit or 0.0)),),
                blocking=limit is not None,
            )
        )
    return checks


def _validate(
    checks: list[_Check], frames: dict[str, pd.DataFrame | None]
) -> list[CheckResult]:
    """Run every check's expectations: one GX suite per table, an ephemeral context."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = _ephemeral_context()
    source = context.data_sources.add_pandas("autolabel")
    outcomes: dict[str, list[Any]] = {check.name: [] for check in checks}
    for table in ("labels", "images"):
        frame = frames[table]
        mine = [check for check in checks if check.table == table]
        if frame is None or not mine:
            continue
        # Built whole and never saved: adding expectations one by one to a stored
        # suite re-serialises it each time (half of a small validation's time).
        suite = gx.ExpectationSuite(
            name=f"autolabel-{table}",
            expectations=[
                getattr(gxe, kind)(**arguments, meta={"check": check.name})
                for check in mine
                for kind, arguments in check.expectations
            ],
        )
        batch = (
            source.add_dataframe_asset(table)
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        validation = batch.validate(
            suite,
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": ["image_id"],
            },
        )
        for outcome in validation.results:
            outcomes[outcome.expectation_config.meta["check"]].append(outcome)
    return [_check_result(check, outcomes[check.name]) for check in checks]


def _check_result(check: _Check, outcomes: list[Any]) -> CheckResult:
    failing_ids: set[str] = set()
    failing_rows = 0
    errors = []
    for outcome in outcomes:
        info = outcome.exception_info or {}
        if info.get("raised_exception"):
            errors.append(str(info.get("exception_message") or "GX raised an error"))
            continue
        result = outcome.result or {}
        failing_rows += int(result.get("unexpected_count") or 0)
        for entry in result.get("unexpected_index_list") or []:
            image_id = entry.get("image_id") if isinstance(entry, dict) else None
            failing_ids.add(MISSING_ID if _missing(image_id) else str(image_id))
    success = all(outcome.success for outcome in outcomes) and not errors
    return CheckResult(
        name=check.name,
        description=check.description,
        success=bool(success),
        failing_rows=failing_rows,
        failing_image_ids=sorted(failing_ids),
        blocking=check.blocking,
        error="; ".join(errors) or None,
    )


def _ephemeral_context():
    """A throwaway GX context: in memory, no analytics (network), no progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _missing(value: Any) -> bool:
    return (
        value is None
        or value is pd.NA
        or (isinstance(value, float) and np.isnan(value))
    )


def _sources(
    image_ids: set[str], labels: pd.DataFrame, images: pd.DataFrame | None
) -> dict[str, str]:
    """Where each named image lives, so people can open it (manifest path preferred)."""
    found: dict[str, str] = {}
    for frame, column in ((labels, "source_uri"), (images, "relative_path")):
        if frame is None or column not in frame.columns:
            continue
        known = frame[frame["image_id"].isin(image_ids)]
        found.update(
            zip(known["image_id"].astype(str), known[column].astype(str), strict=True)
        )
    return found


def render_quality_markdown(
    result: QualityResult, policy: QualityPolicy = "warn"
) -> str:
    """The quality report: a table of checks, failing images per check, class counts."""
    failed = result.failed
    verdict = (
        "All blocking checks passed."
        if result.success
        else f"**{len(failed)} check(s) failed** (policy: {policy}: "
        + ("the run fails)." if policy == "fail" else "warning only).")
    )
    lines = [
        "# Label quality",
        "",
        verdict,
        "",
        f"- Labels: {result.labels} on {result.images} readable image(s), "
        f"{len(result.unlabeled_image_ids)} of them without labels",
        "",
        "| check | result | failing rows | images |",
        "| --- | --- | --- | --- |",
    ]
    for check in result.checks:
        status = "pass" if check.success else ("FAIL" if check.blocking else "note")
        if check.error:
            status = "ERROR"
        lines.append(
            f"| {_cell(check.description)} (`{check.name}`) | {status} "
            f"| {check.failing_rows} | {len(check.failing_image_ids)} |"
        )
    for check in result.checks:
        if (
            check.name == "images_have_labels"
            or not check.failing_image_ids
            and not check.error
        ):
            continue
        lines += ["", f"## `{check.name}`: {check.description}", ""]
        if check.error:
            lines.append(f"- could not be evaluated: {_cell(check.error)}")
        lines += _image_bullets(check.failing_image_ids, result.sources)
    lines += ["", "## Labels per class", "", "| class | labels |", "| --- | --- |"]
    lines += [
        f"| {_cell(name)} | {count} |" for name, count in result.per_class.items()
    ]
    lines += ["", f"## Images with no labels ({len(result.unlabeled_image_ids)})", ""]
    lines += _image_bullets(result.unlabeled_image_ids, result.sources) or ["None."]
    return "\n".join(lines) + "\n"


def write_quality_report(
    out: str | Path, result: QualityResult, policy: QualityPolicy = "warn"
) -> Path:
    """Write ``OUT/quality.md`` (for people) and ``OUT/quality.json`` (for scripts)."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    report = root / QUALITY_REPORT
    report.write_text(render_quality_markdown(result, policy), encoding="utf-8")
    (root / QUALITY_JSON).write_text(
        json.dumps(result.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return report


def enforce_quality_policy(
    result: QualityResult, policy: QualityPolicy, report: Path | None = None
) -> None:
    """Raise QualityCheckFailed if the policy is 'fail' and a blocking check failed."""
    if policy not in ("warn", "fail"):
        raise ValueError(f"--quality {policy!r}: choose warn or fail")
    if policy == "fail" and not result.success:
        raise QualityCheckFailed(result, report)


def check_output_quality(
    out: str | Path,
    *,
    class_names: Sequence[str],
    thresholds: Thresholds,
    rules: QualityRules | None = None,
    policy: QualityPolicy = "warn",
) -> QualityResult:
    """Check an output folder's label table and write the report; the policy is applied
    by the caller (``enforce_quality_policy``), after everything else is written."""
    if policy not in ("warn", "fail"):
        raise ValueError(f"--quality {policy!r}: choose warn or fail")
    layout = OutputLayout(out)
    result = run_quality_checks(
        read_labels(layout),
        read_images(layout),
        class_names=class_names,
        thresholds=thresholds,
        rules=rules,
    )
    write_quality_report(out, result, policy)
    return result


@task(name="check-label-quality", cache_policy=NO_CACHE)
def quality_check_task(
    out: str,
    settings: LabelSettings,
    policy: QualityPolicy = "warn",
    rules: QualityRules | None = None,
) -> QualityResult:
    """``check_output_quality`` plus the report as a markdown artifact on the flow run.

    Masks are required when the run segments, unless ``rules`` say otherwise.
    """
    if rules is None:
        rules = QualityRules(require_masks=settings.model.task == "segment")
    result = check_output_quality(
        out,
        class_names=settings.ontology.class_names,
        thresholds=settings.thresholds,
        rules=rules,
        policy=policy,
    )
    create_markdown_artifact(
        markdown=render_quality_markdown(result, policy),
        key="autolabel-quality",
        description="Label quality checks (Great Expectations) and failing images",
    )
    return result


def _image_bullets(image_ids: list[str], sources: dict[str, str]) -> list[str]:
    shown = [
        f"- `{image_id}`"
        + (f" ({_cell(sources[image_id])})" if image_id in sources else "")
        for image_id in image_ids[:_MAX_LISTED]
    ]
    if len(image_ids) > _MAX_LISTED:
        shown.append(
            f"- ... and {len(image_ids) - _MAX_LISTED} more (see quality.json)"
        )
    return shown


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
