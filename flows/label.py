"""The labeling flow: plan chunks -> label them (metered) -> export -> quality ->
report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from model_loaders.protocol import CLASSIFICATION_TASKS
from tasks.credits import BudgetExceeded, CreditAccount, record_credits_task
from tasks.decode_ahead import DecodeAhead
from tasks.export_classification import (
    export_class_folders_task,
    export_class_table_task,
    export_roboflow_classification_task,
)
from tasks.export_coco import export_coco_task
from tasks.export_voc import export_voc_task
from tasks.export_yolo import export_yolo_task
from tasks.label import (
    Chunk,
    ImageSelection,
    each_with_next,
    label_chunk_task,
    plan_chunks_task,
    prune_stale_shards_task,
)
from tasks.labels import OutputLayout
from tasks.quality import enforce_quality_policy, quality_check_task
from tasks.report import RunOutcome, RunSummary, write_report_task
from tasks.review_queue import review_queue_task
from tasks.roboflow_upload import upload_to_roboflow_task
from tasks.s3 import is_s3, staging_folder, upload_outputs_task
from tasks.settings import LabelSettings
from tasks.shard_store import pull_shards_task, push_shards_task
from tasks.sources import SourceOptions
from tasks.splits import Splits


@flow(
    name="label-images", description="Label a folder of images; export COCO and YOLO."
)
def label_images(
    source: str,
    out: str,
    settings: LabelSettings,
    credits: CreditAccount | None = None,
    quality: Literal["warn", "fail"] = "warn",
    sources: SourceOptions | None = None,
    upload_to: str | None = None,
    selection: ImageSelection | None = None,
    shard: tuple[int, int] | None = None,
    splits: Splits | None = None,
) -> RunSummary | None:
    """Label every image under ``source`` with ``settings``; write everything under
    ``out``.

    Args:
        source: Folder of images (searched recursively).
        out: Output folder: labels/, images/, coco/, yolo/, report.md, quality.md; an
            s3://bucket/prefix is written locally first, then uploaded.
        settings: Classes and their descriptions, model, thresholds, NMS and chunk size.
        credits: The ledger to charge and an optional budget; None meters nothing.
        quality: warn: quality failures are reported; fail: they also fail the run.
        sources: How to reach S3-compatible stores; the frame rate to sample videos at.
        upload_to: roboflow://WORKSPACE/PROJECT to re-upload images + labels to, as one
            annotation batch named after the run.
        selection: Label only new images and/or a given list; the output is added to,
            not replaced (new uploads, scheduled scans).
        shard: (index, count): label only every count-th chunk from index, for a parent
            flow that fans a batch out to several workers; the parent then exports and
            reports, so a shard run returns None. With an s3:// ``out`` the shard
            works in its own scratch folder and puts each chunk's shards under the
            prefix as soon as they are written: no shared disk needed.
        splits: Train/val/test fractions for the exports (by image content hash);
            empty: everything in train, plus a val split where a format needs one.
    """
    run_id = flow_run.get_id() or "local"
    destination, out = out, str(staging_folder(out, shard)) if is_s3(out) else out
    chunks = plan_chunks_task(source, settings, out, sources, selection=selection)
    if shard is not None:
        index, count = shard
        _label_shard(
            chunks[index::count], settings, out, destination, run_id, credits, sources
        )
        return None
    if selection is None or not selection.incremental:
        prune_stale_shards_task(out, chunks)
    budget_stop = _label_chunks(chunks, settings, out, run_id, credits, sources)
    return finish_run(
        out,
        settings,
        run_id,
        destination=destination,
        credits=credits,
        quality=quality,
        sources=sources,
        upload_to=upload_to,
        budget_stop=budget_stop,
        splits=splits,
    )


def finish_run(
    out: str,
    settings: LabelSettings,
    run_id: str,
    *,
    destination: str,
    credits: CreditAccount | None = None,
    quality: Literal["warn", "fail"] = "warn",
    sources: SourceOptions | None = None,
    upload_to: str | None = None,
    budget_stop: str | None = None,
    charged_runs: list[str] | None = None,
    splits: Splits | None = None,
) -> RunSummary:
    """Everything after labeling: exports, quality checks, review queue, upload,
    credits, report.

    Part of ``label_images``; also called by a parent flow once its shards are done
    (``charged_runs``: the shard runs, whose charges the report counts as the run's).
    """
    layout = OutputLayout(out)
    _export(layout, settings, splits or Splits())
    checks = quality_check_task(out, settings, policy=quality)
    review_queue_task(out, settings)  # before the upload: it tags queued images
    uploaded = None
    if upload_to:
        uploaded = upload_to_roboflow_task(
            out,
            upload_to,
            settings.ontology.class_names,
            batch_name=f"autolabel {run_id}",
            tags=[f"model:{settings.model.model}", f"run:{run_id}"],
            splits=splits,
        )
    if credits is not None:
        record_credits_task(credits, run_id, charged_runs or [])
    outcome = RunOutcome(credits, budget_stop, checks, uploaded, charged_runs or [])
    summary = write_report_task(out, settings, run_id, outcome)
    if destination != out:
        upload_outputs_task(
            out, destination, (sources or SourceOptions()).s3_endpoint_url
        )
    enforce_quality_policy(checks, quality, layout.root / "quality.md")
    return summary


def _export(layout: OutputLayout, settings: LabelSettings, splits: Splits) -> None:
    """The exports that fit the task, each split by ``splits``: COCO, YOLO and Pascal
    VOC for boxes and masks; a class table, per-class folders (single-label) and
    Roboflow's upload layout for classification."""
    names, task = settings.ontology.class_names, settings.model.task
    if task in CLASSIFICATION_TASKS:
        export_class_table_task(layout, names)
        if task == "classify":
            export_class_folders_task(layout, names)
        export_roboflow_classification_task(layout, names, task == "classify-multi")
    else:
        export_coco_task(layout, names, splits)
        export_yolo_task(layout, names, splits)
        export_voc_task(layout, names, splits)


def _label_shard(
    chunks: list[Chunk],
    settings: LabelSettings,
    out: str,
    destination: str,
    run_id: str,
    credits: CreditAccount | None,
    sources: SourceOptions | None,
) -> None:
    """A shard run's chunks. With an s3:// output (``out`` is then this run's own
    scratch folder): the chunks another run finished are pulled first (reused, not
    labeled again) and each chunk's shards are pushed as soon as they are written
    (see ``tasks.shard_store``); the parent merges them."""
    if destination == out:
        _label_chunks(chunks, settings, out, run_id, credits, sources)
        return
    endpoint = (sources or SourceOptions()).s3_endpoint_url
    pull_shards_task(destination, out, [chunk.key for chunk in chunks], endpoint)
    _label_chunks(
        chunks,
        settings,
        out,
        run_id,
        credits,
        sources,
        after_chunk=lambda chunk: push_shards_task(
            out, destination, chunk.key, endpoint
        ),
    )


def _label_chunks(
    chunks: list[Chunk],
    settings: LabelSettings,
    out: str,
    run_id: str,
    credits: CreditAccount | None,
    sources: SourceOptions | None,
    *,
    after_chunk: Callable[[Chunk], object] | None = None,
) -> str | None:
    """Label chunk after chunk, showing progress in the Prefect UI; stop at the budget.

    One chunk at a time: each already overlaps decoding with batched inference (and
    decodes the next chunk's first images while its last batches run, ``DecodeAhead``),
    and a budget stop must not let a later, smaller chunk slip through. Scale out with
    more workers, not more threads. Returns the budget message if the budget stopped
    the run.
    """
    total = sum(len(chunk.refs) for chunk in chunks)
    artifact_id = create_progress_artifact(
        0.0, key="labeling-progress", description=f"Images labeled of {total}"
    )
    done = 0
    with DecodeAhead(out, sources) as ahead:
        for chunk, next_chunk in each_with_next(chunks):
            state = label_chunk_task(
                chunk,
                settings,
                out,
                run_id,
                credits,
                sources,
                decode_ahead=ahead,
                next_chunk=next_chunk,
                return_state=True,
            )
            result = state.result(raise_on_failure=False)
            if isinstance(result, BudgetExceeded):
                return str(result)
            if isinstance(result, BaseException):
                raise result
            if after_chunk is not None:
                after_chunk(chunk)
            done += result.images
            update_progress_artifact(artifact_id, progress=100.0 * done / max(total, 1))
    return None
