"""The run report: counts per class, images without labels, images skipped and why.

Written to ``OUT/report.md`` and attached to the flow run as a markdown artifact, so the
same text is read on the terminal, in the output folder and in the Prefect UI.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.credits import CreditAccount, format_credits
from tasks.labels import OutputLayout, iter_label_shards
from tasks.markdown import markdown_cell, markdown_code, markdown_text
from tasks.quality import QualityResult
from tasks.roboflow_upload import UploadSummary
from tasks.settings import LabelSettings

# Longer lists are cut in the markdown (the Parquet tables hold them all).
_MAX_LISTED = 200


@dataclass
class RunOutcome:
    """What a run did besides labeling: what it charged, whether the budget stopped it,
    how the quality checks went, what reached Roboflow."""

    credits: CreditAccount | None = None
    budget_stop: str | None = None
    quality: QualityResult | None = None
    upload: UploadSummary | None = None
    # Runs whose charges are this run's too: a sharded batch's shard runs.
    charged_runs: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    """The numbers a user checks after a run; also the flow's return value."""

    run_id: str
    images: int = 0
    labeled: int = 0
    labels: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    unlabeled: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Charged to this run; None when nothing is metered.
    credits_used: float | None = None
    credits_total: float | None = None  # charged to the dataset so far
    budget_stop: str | None = None  # why the budget stopped the run early, if it did
    quality_failed: list[str] = field(default_factory=list)  # names of failed checks
    upload: UploadSummary | None = None  # the Roboflow re-upload, if one was asked for


def summarize(
    out: str,
    settings: LabelSettings,
    run_id: str,
    outcome: RunOutcome | None = None,
) -> RunSummary:
    """Read the output folder's tables and count what a user wants to know."""
    outcome = outcome or RunOutcome()
    credits = outcome.credits
    counts = _count_tables(OutputLayout(out))
    return RunSummary(
        run_id=run_id,
        images=counts.images,
        labeled=counts.readable,
        labels=counts.labels,
        per_class={
            name: int(counts.per_class.get(name, 0))
            for name in settings.ontology.class_names
        },
        unlabeled=sorted(counts.unlabeled),
        skipped=sorted(counts.skipped, key=lambda item: item[0]),
        credits_used=_charged(credits, [run_id, *outcome.charged_runs])
        if credits
        else None,
        credits_total=credits.ledger().used(credits.dataset) if credits else None,
        budget_stop=outcome.budget_stop,
        quality_failed=[c.name for c in outcome.quality.failed]
        if outcome.quality
        else [],
        upload=outcome.upload,
    )


@dataclass
class _TableCounts:
    """What the report counts, summed chunk by chunk."""

    images: int = 0
    readable: int = 0
    labels: int = 0
    per_class: Counter = field(default_factory=Counter)
    unlabeled: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _count_tables(layout: OutputLayout) -> _TableCounts:
    """Count the output folder's tables one chunk at a time (``iter_label_shards``;
    an image's labels are in its own chunk), reading only the columns counted, so
    memory does not grow with the run beyond the lists the report shows."""
    counts = _TableCounts()
    for labels, images in iter_label_shards(
        layout,
        label_columns=["image_id", "class_name"],
        image_columns=["image_id", "relative_path", "skipped_reason"],
    ):
        readable = images[images["skipped_reason"].isna()]
        skipped = images[images["skipped_reason"].notna()]
        counts.images += len(images)
        counts.readable += len(readable)
        counts.labels += len(labels)
        counts.per_class.update(labels["class_name"].value_counts().to_dict())
        labeled = set(labels["image_id"])
        counts.unlabeled += readable.loc[
            ~readable["image_id"].isin(labeled), "relative_path"
        ].tolist()
        counts.skipped += list(
            zip(skipped["relative_path"], skipped["skipped_reason"], strict=True)
        )
    return counts


def _charged(credits: CreditAccount, run_ids: list[str]) -> float:
    """Credits charged to the dataset by these runs (each books to its own id)."""
    ledger = credits.ledger()
    return round(sum(ledger.used(credits.dataset, run) for run in run_ids), 9)


def render_report(summary: RunSummary, settings: LabelSettings) -> str:
    """The markdown report."""
    prompt_mode = getattr(settings.model.options, "prompt_mode", None)
    lines = [
        "# Auto-label report",
        "",
        f"- Run: `{summary.run_id}`",
        f"- Model: {markdown_code(settings.model.model)} ({settings.model.backend}"
        + (f", {prompt_mode} prompts)" if prompt_mode else ")"),
        f"- Images: {summary.images} found, {summary.labeled} labeled, "
        f"{len(summary.skipped)} skipped",
        f"- Labels: {summary.labels}",
        *_credit_lines(summary),
        *_quality_lines(summary),
        *_upload_lines(summary),
        "",
        "## Labels per class",
        "",
        "| class | threshold | labels |",
        "| --- | --- | --- |",
    ]
    for name, count in summary.per_class.items():
        threshold = settings.thresholds.for_class(name)
        lines.append(f"| {markdown_cell(name)} | {threshold:g} | {count} |")
    lines += ["", f"## Images with no labels ({len(summary.unlabeled)})", ""]
    lines += _bullets(markdown_code(path) for path in summary.unlabeled)
    lines += ["", f"## Images skipped ({len(summary.skipped)})", ""]
    lines += _bullets(
        f"{markdown_code(path)}: {markdown_text(reason)}"
        for path, reason in summary.skipped
    )
    return "\n".join(lines) + "\n"


def write_report(
    out: str,
    settings: LabelSettings,
    run_id: str,
    outcome: RunOutcome | None = None,
) -> RunSummary:
    """Summarise the run and write ``OUT/report.md``."""
    summary = summarize(out, settings, run_id, outcome)
    OutputLayout(out).report.write_text(
        render_report(summary, settings), encoding="utf-8"
    )
    return summary


@task(name="write-report", cache_policy=NO_CACHE)
def write_report_task(
    out: str,
    settings: LabelSettings,
    run_id: str,
    outcome: RunOutcome | None = None,
) -> RunSummary:
    """``write_report`` plus the same markdown as an artifact on the flow run."""
    summary = write_report(out, settings, run_id, outcome)
    create_markdown_artifact(
        markdown=render_report(summary, settings),
        key="autolabel-report",
        description="Counts per class, unlabeled and skipped images",
    )
    return summary


def _credit_lines(summary: RunSummary) -> list[str]:
    if summary.credits_used is None:
        return []
    lines = [
        f"- Credits: {format_credits(summary.credits_used)} charged to this run, "
        f"{format_credits(summary.credits_total or 0.0)} to the dataset so far"
    ]
    if summary.budget_stop:
        lines.append(
            f"- **Stopped by the budget** before labeling more: {summary.budget_stop}"
        )
    return lines


def _quality_lines(summary: RunSummary) -> list[str]:
    if not summary.quality_failed:
        return ["- Quality: all blocking checks passed (quality.md)"]
    return [f"- Quality: failed {', '.join(summary.quality_failed)} (see quality.md)"]


def _upload_lines(summary: RunSummary) -> list[str]:
    upload = summary.upload
    if upload is None:
        return []
    lines = [
        f"- Roboflow upload: {upload.uploaded} uploaded, "
        f"{upload.skipped} already there, "
        f"{len(upload.failed)} failed"
    ]
    lines += [
        f"  - {markdown_code(path)}: {markdown_text(reason)}"
        for path, reason in upload.failed[:_MAX_LISTED]
    ]
    return lines


def _bullets(items) -> list[str]:
    items = list(items)
    shown = [f"- {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        shown.append(f"- ... and {len(items) - _MAX_LISTED} more")
    return shown or ["None."]
