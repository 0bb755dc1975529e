"""The quality report: ``OUT/quality.md`` for people, ``OUT/quality.json`` for scripts.

Rendering is apart from checking so the same markdown serves the file, the Prefect
artifact and anything that re-renders a stored result, without running the suite.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.markdown import markdown_cell, markdown_text
from tasks.quality.results import QualityPolicy, QualityResult

QUALITY_REPORT = "quality.md"
QUALITY_JSON = "quality.json"
_MAX_LISTED = 50  # failing images listed per check in the markdown (JSON has them all)


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
            f"| {markdown_cell(check.description)} (`{check.name}`) | {status} "
            f"| {check.failing_rows} | {len(check.failing_image_ids)} |"
        )
    for check in result.checks:
        if (
            check.name == "images_have_labels"
            or not check.failing_image_ids
            and not check.error
        ):
            continue
        lines += ["", f"## `{check.name}`: {markdown_text(check.description)}", ""]
        if check.error:
            lines.append(f"- could not be evaluated: {markdown_cell(check.error)}")
        lines += _image_bullets(check.failing_image_ids, result.sources)
    lines += ["", "## Labels per class", "", "| class | labels |", "| --- | --- |"]
    lines += [
        f"| {markdown_cell(name)} | {count} |"
        for name, count in result.per_class.items()
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


def _image_bullets(image_ids: list[str], sources: dict[str, str]) -> list[str]:
    shown = [
        f"- `{image_id}`"
        + (f" ({markdown_cell(sources[image_id])})" if image_id in sources else "")
        for image_id in image_ids[:_MAX_LISTED]
    ]
    if len(image_ids) > _MAX_LISTED:
        shown.append(
            f"- ... and {len(image_ids) - _MAX_LISTED} more (see quality.json)"
        )
    return shown
