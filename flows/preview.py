"""The preview flow: test results on a sample, free: sample -> candidates -> show."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from tasks.preview import DEFAULT_SAMPLE_SIZE, plan_sample_task, run_preview_task
from tasks.preview_report import PreviewSummary, show_preview_task
from tasks.preview_truth import attach_truth_task
from tasks.settings import LabelSettings
from tasks.sources import SourceOptions


@flow(
    name="preview",
    description="Test results on a sample of images (0 credits): every candidate at a "
    "low floor, shown per class as (shown)/(total) at the thresholds.",
)
def preview(
    source: str,
    out: str,
    settings: LabelSettings,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    images: list[str] | None = None,
    sources: SourceOptions | None = None,
    truth: str | None = None,
    truth_map: list[str] | None = None,
) -> PreviewSummary:
    """Label a sample of ``source`` at a low floor; show it at ``settings``' thresholds.

    Args:
        source: Folder of images (searched recursively), s3://bucket/prefix or
            roboflow://workspace/project[/batch].
        out: Output folder; the preview goes to ``out/preview/``.
        settings: Classes, model, thresholds and NMS the preview is shown with.
        sample_size: How many images a random sample has.
        seed: Seed of the random sample (the same seed gives the same sample).
        images: Relative paths of images to use instead of a random sample.
        sources: How to reach the source (S3 endpoint, video frames per second).
        truth: Human labels (COCO JSON, YOLO folder): the preview then shows each
            class's precision/recall/F1 on the sample's labeled images.
        truth_map: THEIR_CLASS=OUR_CLASS for truth classes named otherwise.
    """
    run_id = flow_run.get_id() or "local"
    refs = plan_sample_task(
        source, out, size=sample_size, seed=seed, images=images, options=sources
    )
    run_preview_task(
        source,
        refs,
        settings,
        out,
        run_id=run_id,
        seed=None if images else seed,
        sample_size=len(refs),
        options=sources,
    )
    if truth is not None:
        attach_truth_task(out, truth, truth_map)
    return show_preview_task(out, settings.thresholds)
