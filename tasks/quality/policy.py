"""The quality policy: whether failed checks only warn or fail the run.

Separate from checking because the caller applies it last, after every other output
(exports, reports, uploads) is written: a failed run still leaves its evidence behind.
"""

from __future__ import annotations

from pathlib import Path

from tasks.quality.results import QualityPolicy, QualityResult


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


def check_policy(policy: str) -> None:
    """ValueError naming the choices unless ``policy`` is one (checked before the suite
    runs, so a typo fails at once rather than after minutes of validation)."""
    if policy not in ("warn", "fail"):
        raise ValueError(f"--quality {policy!r}: choose warn or fail")


def enforce_quality_policy(
    result: QualityResult, policy: QualityPolicy, report: Path | None = None
) -> None:
    """Raise QualityCheckFailed if the policy is 'fail' and a blocking check failed."""
    check_policy(policy)
    if policy == "fail" and not result.success:
        raise QualityCheckFailed(result, report)
