"""Label quality: a Great Expectations suite on the label table, a report, a policy.

The label table is joined with what its checks need and validated by a GX suite
(``suite``, with the per-row ``measures`` it cannot compute itself). The result is plain
data (``results``), rendered to ``OUT/quality.md`` and a markdown artifact (``report``,
``task``); the ``policy`` decides whether failures only warn or fail the run.

One module per job keeps each readable on its own; this package re-exports what the
rest of the code imports from ``tasks.quality``, so callers name the package, never a
module inside it.
"""

from __future__ import annotations

from tasks.quality.measures import near_duplicate_flags
from tasks.quality.policy import QualityCheckFailed, enforce_quality_policy
from tasks.quality.report import render_quality_markdown
from tasks.quality.results import CheckResult, QualityResult, QualityRules
from tasks.quality.suite import run_quality_checks
from tasks.quality.task import check_output_quality, quality_check_task

__all__ = [
    "CheckResult",
    "QualityCheckFailed",
    "QualityResult",
    "QualityRules",
    "check_output_quality",
    "enforce_quality_policy",
    "near_duplicate_flags",
    "quality_check_task",
    "render_quality_markdown",
    "run_quality_checks",
]
