"""The labeling flow: discover -> chunk -> label chunks -> export COCO/YOLO -> report."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.export_coco import export_coco_task
from tasks.export_yolo import export_yolo_task
from tasks.label import (
    ChunkResult,
    label_chunk_task,
    plan_chunks_task,
    prune_stale_shards_task,
)
from tasks.labels import OutputLayout
from tasks.report import RunSummary, write_report_task
from tasks.settings import LabelSettings


@flow(
    name="label-images",
    description="Label a folder of images and export COCO, YOLO and a report.",
    # One chunk at a time keeps one model's worth of memory; each chunk already overlaps
    # decoding with inference. Scale out with more workers, not more threads.
    task_runner=ThreadPoolTaskRunner(max_workers=1),
)
def label_images(source: str, out: str, settings: LabelSettings) -> RunSummary:
    """Label every image under ``source`` with ``settings``; write everything under ``out``.

    Args:
        source: Folder of images (searched recursively).
        out: Output folder: labels/, images/, coco/, yolo/ and report.md.
        settings: Classes and their descriptions, model, thresholds, NMS and chunk size.
    """
    run_id = flow_run.get_id() or "local"
    chunks = plan_chunks_task(source, settings)
    prune_stale_shards_task(out, chunks)
    futures = label_chunk_task.map(
        chunks, settings=unmapped(settings), out=unmapped(out), run_id=unmapped(run_id)
    )
    _follow_progress(futures, total=sum(len(chunk.refs) for chunk in chunks))
    layout = OutputLayout(out)
    export_coco_task(layout, settings.ontology.class_names)
    export_yolo_task(layout, settings.ontology.class_names)
    return write_report_task(out, settings, run_id)


def _follow_progress(futures: list[PrefectFuture[ChunkResult]], *, total: int) -> None:
    """Wait for every chunk, showing the share of images done as a progress artifact in the
    Prefect UI; a failed chunk fails the flow here, after the others have finished."""
    artifact_id = create_progress_artifact(
        0.0, key="labeling-progress", description=f"Images labeled of {total}"
    )
    done = 0
    for future in as_completed(futures):
        done += future.result().images
        update_progress_artifact(artifact_id, progress=100.0 * done / max(total, 1))
