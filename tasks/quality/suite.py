"""The quality suite: the label table, joined with what its checks need, run by GX.

The label table is joined with what its checks need (each class's approved threshold,
the ontology's ids, a near-duplicate flag, mask areas and extents, the image manifest)
and validated by a GX suite in an ephemeral context. Every check names the image ids of
its failing rows, and the answer is plain data (``QualityResult``).

Great Expectations is imported inside the functions that use it: importing it takes
seconds, and most commands never validate anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from tasks.quality.measures import is_missing, mask_measures, near_duplicate_flags
from tasks.quality.results import (
    MISSING_ID,
    REQUIRED_COLUMNS,
    CheckResult,
    QualityResult,
    QualityRules,
)
from tasks.thresholds import Thresholds


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
    return run_quality_checks_in_parts(
        [(labels, images)],
        class_names=class_names,
        thresholds=thresholds,
        rules=rules,
        with_images=images is not None,
    )


def run_quality_checks_in_parts(
    parts: Iterable[tuple[pd.DataFrame, pd.DataFrame | None]],
    *,
    class_names: Sequence[str],
    thresholds: Thresholds,
    rules: QualityRules | None = None,
    with_images: bool = True,
) -> QualityResult:
    """``run_quality_checks`` on a table given in parts, one part in memory at a time.

    Each part is (labels, manifest) of whole images: every label of an image in the
    part, and the part's images (``iter_label_shards`` gives them chunk by chunk).
    The checks are per row or per image, so the parts' findings add up to the whole
    table's: failing rows are summed, image ids joined, and a check with a tolerance
    (``max_unlabeled_fraction``) is decided on the summed counts. The one finding that
    looks across images, a near-duplicate box, compares boxes of one image id within
    a part: two byte-identical files labeled in different chunks are not compared.
    """
    rules = rules or QualityRules()
    validator = _Validator()
    merged: dict[str, _Merged] = {}
    per_class = dict.fromkeys(class_names, 0)
    totals = {"labels": 0, "images": 0}
    label_ids: set[str] = set()  # only without a manifest: images counted by id
    from_labels: dict[str, str] = {}
    from_images: dict[str, str] = {}
    for labels, images in parts:
        prepared = _prepare_labels(labels, class_names, thresholds, rules)
        manifest = (
            _prepare_images(images, labels)
            if with_images and images is not None
            else None
        )
        checks = _checks(
            has_masks="mask_area" in prepared.columns,
            has_images=with_images,
            rules=rules,
            class_names=class_names,
        )
        frames = {"labels": prepared, "images": manifest}
        for check, result, elements in validator.validate(checks, frames):
            merged.setdefault(check.name, _Merged(check)).add(result, elements)
        for name, count in prepared["class_name"].value_counts().items():
            if pd.notna(name):
                per_class[str(name)] = per_class.get(str(name), 0) + int(count)
        totals["labels"] += len(prepared)
        if manifest is not None:
            totals["images"] += len(manifest)
        elif not with_images:
            label_ids.update(labels["image_id"].dropna().astype(str))
        named = {i for m in merged.values() for i in m.failing_ids}
        labels_found, images_found = _sources(named, labels, images)
        from_labels.update(labels_found)
        from_images.update(images_found)
    results = [m.result(rules) for m in _in_suite_order(merged, rules, class_names)]
    by_name = {result.name: result for result in results}
    unlabeled = (
        by_name["images_have_labels"].failing_image_ids
        if "images_have_labels" in by_name
        else []
    )
    named = {i for result in results for i in result.failing_image_ids}
    sources = {i: v for i, v in {**from_labels, **from_images}.items() if i in named}
    return QualityResult(
        checks=results,
        labels=totals["labels"],
        images=totals["images"] if with_images else len(label_ids),
        per_class=per_class,
        unlabeled_image_ids=unlabeled,
        sources=sources,
    )


def _in_suite_order(
    merged: dict[str, _Merged], rules: QualityRules, class_names: Sequence[str]
) -> list[_Merged]:
    """The merged checks in the suite's order (a mask check seen only in some parts
    comes where the suite lists it)."""
    order = [
        c.name
        for c in _checks(
            has_masks=True, has_images=True, rules=rules, class_names=class_names
        )
    ]
    return sorted(merged.values(), key=lambda m: order.index(m.check.name))


@dataclass
class _Merged:
    """One check's findings summed over the parts of a table."""

    check: _Check
    failing_rows: int = 0
    elements: int = 0
    all_passed: bool = True
    errors: list[str] = field(default_factory=list)
    failing_ids: set[str] = field(default_factory=set)

    def add(self, result: CheckResult, elements: int) -> None:
        self.failing_rows += result.failing_rows
        self.elements += elements
        self.all_passed &= result.success
        self.failing_ids.update(result.failing_image_ids)
        if result.error:
            self.errors.append(result.error)

    def result(self, rules: QualityRules) -> CheckResult:
        success = self.all_passed and not self.errors
        if self.check.name == "images_have_labels" and not self.errors:
            # A tolerance is a fraction of the whole table, not of each part.
            mostly = 1.0 - (rules.max_unlabeled_fraction or 0.0)
            passed = self.elements - self.failing_rows
            success = self.elements == 0 or passed / self.elements >= mostly
        return CheckResult(
            name=self.check.name,
            description=self.check.description,
            success=bool(success),
            failing_rows=self.failing_rows,
            failing_image_ids=sorted(self.failing_ids),
            blocking=self.check.blocking,
            error="; ".join(dict.fromkeys(self.errors)) or None,
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
        area, inside = mask_measures(
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


class _Validator:
    """Runs checks on table parts: one GX context and data source for all parts."""

    def __init__(self) -> None:
        self._definitions: dict[str, Any] = {}
        self._source: Any = None

    def validate(
        self, checks: list[_Check], frames: dict[str, pd.DataFrame | None]
    ) -> list[tuple[_Check, CheckResult, int]]:
        """Each check's result on these frames, with how many rows it looked at."""
        import great_expectations as gx
        import great_expectations.expectations as gxe

        if self._source is None:
            context = _ephemeral_context()
            self._source = context.data_sources.add_pandas("autolabel")
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
            if table not in self._definitions:
                self._definitions[table] = self._source.add_dataframe_asset(
                    table
                ).add_batch_definition_whole_dataframe("all")
            batch = self._definitions[table].get_batch(
                batch_parameters={"dataframe": frame}
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
        return [
            (check, _check_result(check, outcomes[check.name]), len(frame))
            for check in checks
            if (frame := frames[check.table]) is not None
        ]


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
            failing_ids.add(MISSING_ID if is_missing(image_id) else str(image_id))
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


def _sources(
    image_ids: set[str], labels: pd.DataFrame, images: pd.DataFrame | None
) -> tuple[dict[str, str], dict[str, str]]:
    """Where each named image lives, so people can open it: (from the labels' source
    URIs, from the manifest's relative paths); the manifest's path is preferred."""
    found: list[dict[str, str]] = []
    for frame, column in ((labels, "source_uri"), (images, "relative_path")):
        if frame is None or column not in frame.columns:
            found.append({})
            continue
        known = frame[frame["image_id"].isin(image_ids)]
        found.append(
            dict(
                zip(
                    known["image_id"].astype(str),
                    known[column].astype(str),
                    strict=True,
                )
            )
        )
    return found[0], found[1]
