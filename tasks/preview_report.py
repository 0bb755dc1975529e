"""A stored preview shown at some thresholds: counts, annotated images, artifacts.

Everything here reads the stored candidates (``tasks.preview``) and never the model, so
a threshold change is answered in milliseconds: by ``autolabel preview --from OUT``, and
by the approval loop when thresholds are revised. The same markdown is written to
``OUT/preview/summary.md`` (image links) and attached to the flow run (inline
thumbnails).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.markdown import markdown_cell, markdown_code, markdown_text
from tasks.preview import (
    PREVIEW_CREDITS,
    PreviewLayout,
    class_counts,
    filter_candidates,
    load_record,
    read_candidates,
    read_manifest,
    save_record,
)
from tasks.preview_truth import TruthScore, stored_truth, truth_scores
from tasks.render import render_images, thumbnail_data_uri
from tasks.settings import LabelSettings
from tasks.thresholds import NmsMode, Thresholds

PREVIEW_ARTIFACT = "autolabel-preview"
CANDIDATES_ARTIFACT = "autolabel-preview-candidates"
_MAX_TABLE_ROWS = 500  # the artifact table; candidates.parquet holds them all
_MAX_INLINE_IMAGES = 12

# A link destination stays one, whatever the file is called: what would end it
# (space, parentheses, angle brackets, backslash) is percent-encoded; data: URIs
# pass as they are.
_LINK_SAFE = "".join(c for c in string.printable if c not in ' ()<>\\`"\t\n\r\x0b\x0c')


@dataclass
class PreviewSummary:
    """What a user reads from a preview; also the preview flow's return value."""

    out: str
    source: str
    sample: list[str]
    seed: int | None
    floor: float
    model: str
    thresholds: dict[str, float]
    counts: dict[str, tuple[int, int]]  # class -> (shown, total)
    candidates: int
    images: list[str] = field(default_factory=list)  # annotated copies
    skipped: list[tuple[str, str]] = field(default_factory=list)
    below_floor: list[str] = field(default_factory=list)  # classes not answerable
    credits: int = PREVIEW_CREDITS
    # class -> P/R/F1 on the sample's labeled images (None: the preview has no truth)
    truth: dict[str, TruthScore] | None = None
    truth_source: str | None = None


def show_preview(
    out: str,
    thresholds: Thresholds | None = None,
    *,
    nms: NmsMode | None = None,
    nms_iou: float | None = None,
) -> PreviewSummary:
    """Re-filter the stored candidates at ``thresholds`` and re-render; no model call.

    The new thresholds (and NMS) are saved into ``sample.json``, so the preview folder
    always describes what it shows.

    Args:
        out: The output folder holding ``preview/``.
        thresholds: Thresholds to show; None keeps the stored ones.
        nms: NMS mode to show; None keeps the stored one.
        nms_iou: NMS IoU; None keeps the stored one.

    Raises:
        PreviewError: If there is no preview under ``out``.
        ThresholdError: If ``thresholds`` name a class the preview does not have.
    """
    record = load_record(out)
    settings = _updated(record.settings, thresholds, nms, nms_iou)
    class_names = settings.ontology.class_names
    candidates = read_candidates(out)
    manifest = read_manifest(out)
    shown = filter_candidates(
        candidates,
        settings.thresholds,
        nms=settings.nms,
        nms_iou=settings.nms_iou,
        class_names=class_names,
    )
    layout = PreviewLayout(out)
    images = render_images(
        manifest, shown, class_names=class_names, images_dir=layout.images_dir
    )
    save_record(out, record.model_copy(update={"settings": settings}))
    found = stored_truth(out)
    skipped = manifest[manifest["skipped_reason"].notna()].sort_values("relative_path")
    summary = PreviewSummary(
        out=str(out),
        source=record.source,
        sample=list(record.sample),
        seed=record.seed,
        floor=record.floor,
        model=settings.model.model,
        thresholds={n: settings.thresholds.for_class(n) for n in class_names},
        counts=class_counts(candidates, shown, class_names),
        candidates=len(candidates),
        images=[str(path) for path in images],
        skipped=list(
            zip(skipped["relative_path"], skipped["skipped_reason"], strict=True)
        ),
        below_floor=[
            n for n in class_names if settings.thresholds.for_class(n) < record.floor
        ],
        truth=truth_scores(out, settings) if found else None,
        truth_source=found[0].source if found else None,
    )
    layout.summary.write_text(
        render_markdown(summary, image_link=lambda p: p.relative_to(layout.root)),
        encoding="utf-8",
    )
    return summary


def _updated(
    settings: LabelSettings,
    thresholds: Thresholds | None,
    nms: NmsMode | None,
    nms_iou: float | None,
) -> LabelSettings:
    if thresholds is not None:
        thresholds.check_classes(settings.ontology)
    data = settings.model_dump()
    if thresholds is not None:
        data["thresholds"] = thresholds.model_dump()
    if nms is not None:
        data["nms"] = nms
    if nms_iou is not None:
        data["nms_iou"] = nms_iou
    return LabelSettings.model_validate(data)


def render_markdown(
    summary: PreviewSummary, *, image_link: Callable[[Path], object]
) -> str:
    """The preview summary: where it came from, the per-class table, the images."""
    drawn = (
        f"a random sample of {len(summary.sample)} (seed {summary.seed})"
        if summary.seed is not None
        else f"{len(summary.sample)} picked images"
    )
    lines = [
        f"# Test results on {len(summary.sample)} sample images",
        "",
        f"- Source: {markdown_code(summary.source)}, {drawn}",
        f"- Model: {markdown_code(summary.model)} run once at a floor of "
        f"{summary.floor:g}: {summary.candidates} candidates kept with their scores",
        f"- Cost: {summary.credits} credits (test results are free)",
        "",
        "| class | threshold | shown / total |",
        "| --- | --- | --- |",
    ]
    for name, (shown, total) in summary.counts.items():
        threshold = summary.thresholds[name]
        lines.append(f"| {markdown_cell(name)} | {threshold:g} | {shown}/{total} |")
    lines += truth_markdown(summary)
    lines += [
        "",
        "*shown*: labels the batch keeps at the threshold (after NMS); *total*: "
        f"candidates scoring at least {summary.floor:g}.",
    ]
    if summary.below_floor:
        lines += [
            "",
            f"**Below the floor:** {markdown_text(', '.join(summary.below_floor))}: "
            "candidates under "
            f"{summary.floor:g} were not kept, so the counts may be too low; run the "
            "preview again to see them.",
        ]
    if summary.skipped:
        lines += ["", "## Skipped", ""]
        lines += [
            f"- {markdown_code(path)}: {markdown_text(reason)}"
            for path, reason in summary.skipped
        ]
    lines += ["", "## Annotated images", ""]
    for image in summary.images:
        name = Path(image).name
        link = quote(str(image_link(Path(image))), safe=_LINK_SAFE)
        lines.append(f"![{markdown_text(name)}]({link})")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def truth_markdown(summary: PreviewSummary) -> list[str]:
    """The per-class scores against the sample's human labels, if it has any."""
    if not summary.truth:
        return []
    lines = [
        "",
        f"Against the human labels of {markdown_code(summary.truth_source or '')} "
        "(the sample's labeled images):",
        "",
        "| class | threshold | precision | recall | F1 | F1-optimal threshold |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, score in summary.truth.items():
        best = (
            f"{score.suggested:g} (F1 {number(score.suggested_f1)})"
            if score.from_truth
            else f"keeps {score.threshold:g}: {markdown_text(score.reason)}"
        )
        lines.append(
            f"| {markdown_cell(name)} | {score.threshold:g} | "
            f"{number(score.precision)} | {number(score.recall)} | "
            f"{number(score.f1)} | {best} |"
        )
    return lines


def number(value: float | None) -> str:
    """A score to 3 decimals, or n/a where it is undefined."""
    return "n/a" if value is None else f"{value:.3f}"


def candidates_table(out: str, settings: LabelSettings) -> list[dict]:
    """The highest-scoring candidates as plain rows, with whether each is shown."""
    candidates = read_candidates(out).reset_index(drop=True)
    manifest = read_manifest(out)[["image_id", "source_uri", "relative_path"]]
    shown = filter_candidates(
        candidates,
        settings.thresholds,
        nms=settings.nms,
        nms_iou=settings.nms_iou,
        class_names=settings.ontology.class_names,
    )
    table = candidates.assign(shown=candidates.index.isin(shown.index)).merge(
        manifest, on=["image_id", "source_uri"], how="left"
    )
    table = table.sort_values(
        ["confidence", "relative_path"], ascending=[False, True], kind="stable"
    ).head(_MAX_TABLE_ROWS)
    return [
        {
            "image": str(row.relative_path),
            "class": str(row.class_name),
            "prompt": str(row.prompt),
            "score": round(float(row.confidence), 4),
            "shown": bool(row.shown),
            "box_xyxy": [
                round(float(v), 1) for v in (row.x_min, row.y_min, row.x_max, row.y_max)
            ],
        }
        for row in table.itertuples(index=False)
    ]


def publish_preview(summary: PreviewSummary) -> None:
    """Attach the summary (inline thumbnails) and the candidates table to the run."""
    inline = set(summary.images[:_MAX_INLINE_IMAGES])
    markdown = render_markdown(
        summary,
        image_link=lambda p: thumbnail_data_uri(p) if str(p) in inline else p.as_uri(),
    )
    create_markdown_artifact(
        markdown=markdown,
        key=PREVIEW_ARTIFACT,
        description="Test results on a sample: (shown)/(total) per class (free)",
    )
    rows = candidates_table(summary.out, load_record(summary.out).settings)
    create_table_artifact(
        table=rows or [{"image": "", "class": "", "score": 0.0, "shown": False}],
        key=CANDIDATES_ARTIFACT,
        description=f"Preview candidates, highest score first (top {_MAX_TABLE_ROWS})",
    )


def _show_and_publish(
    out: str,
    thresholds: Thresholds | None = None,
    nms: NmsMode | None = None,
    nms_iou: float | None = None,
) -> PreviewSummary:
    summary = show_preview(out, thresholds, nms=nms, nms_iou=nms_iou)
    publish_preview(summary)
    return summary


show_preview_task = task(_show_and_publish, name="show-preview", cache_policy=NO_CACHE)
