"""Checking an output folder: read its tables, run the suite, write the report.

This is the part flows call (``quality_check_task``); the suite, the report and the
policy below it know nothing of output folders or Prefect.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.labels import (
    IMAGE_SCHEMA,
    LABEL_SCHEMA,
    OutputLayout,
    iter_label_shards,
)
from tasks.quality.policy import check_policy
from tasks.quality.report import render_quality_markdown, write_quality_report
from tasks.quality.results import QualityPolicy, QualityResult, QualityRules
from tasks.quality.suite import run_quality_checks_in_parts
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds


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
    check_policy(policy)
    result = run_quality_checks_in_parts(
        table_parts(OutputLayout(out)),
        class_names=class_names,
        thresholds=thresholds,
        rules=rules,
    )
    write_quality_report(out, result, policy)
    return result


# Label rows validated together: the suite's memory (GX's complete results, derived
# columns) grows with a part, not with the run. 25,000 is about 1,000 images of a
# random model, more of a trained one; GX's fixed cost per part is ~0.1 s.
PART_ROWS = 25_000


def table_parts(
    layout: OutputLayout, max_rows: int | None = None
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """The output folder's (labels, manifest) in parts of whole chunks, each of about
    ``max_rows`` (default ``PART_ROWS``) label rows (more only when one chunk has
    more); an empty folder gives one empty part, so its report lists every check."""
    max_rows = max_rows or PART_ROWS
    labels_parts: list[pd.DataFrame] = []
    images_parts: list[pd.DataFrame] = []
    rows = 0
    given = False
    for labels, images in iter_label_shards(layout):
        labels_parts.append(labels)
        images_parts.append(images)
        rows += len(labels)
        if rows >= max_rows:
            yield _joined(labels_parts, images_parts)
            labels_parts, images_parts, rows, given = [], [], 0, True
    if labels_parts or not given:
        yield _joined(labels_parts, images_parts)


def _joined(
    labels: list[pd.DataFrame], images: list[pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not labels:
        return (
            LABEL_SCHEMA.empty_table().to_pandas(),
            IMAGE_SCHEMA.empty_table().to_pandas(),
        )
    return (
        pd.concat(labels, ignore_index=True),
        pd.concat(images, ignore_index=True),
    )


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
