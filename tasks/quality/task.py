"""Checking an output folder: read its tables, run the suite, write the report.

This is the part flows call (``quality_check_task``); the suite, the report and the
policy below it know nothing of output folders or Prefect.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.labels import OutputLayout, read_images, read_labels
from tasks.quality.policy import check_policy
from tasks.quality.report import render_quality_markdown, write_quality_report
from tasks.quality.results import QualityPolicy, QualityResult, QualityRules
from tasks.quality.suite import run_quality_checks
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
