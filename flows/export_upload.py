"""Export a labeled dataset again and upload it, without labeling anything.

For the Prefect UI: after labels were added (new uploads, sharded batches), a person
re-exports COCO/YOLO, re-runs the quality checks and sends the result to Roboflow or an
S3 prefix, as its own run. Nothing is charged: no model runs.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.runtime import flow_run

from flows.label import finish_run
from tasks.approval import approved_settings_task
from tasks.report import RunSummary
from tasks.settings import LabelSettings
from tasks.sources import SourceOptions
from tasks.splits import Splits


@flow(
    name="export-upload",
    description="Export a labeled output folder again (COCO, YOLO), check its labels "
    "and upload it to Roboflow and/or S3. Labels nothing, charges nothing.",
)
def export_upload(
    out: str,
    upload_to: str | None = None,
    destination: str | None = None,
    settings: LabelSettings | None = None,
    quality: Literal["warn", "fail"] = "warn",
    sources: SourceOptions | None = None,
    splits: Splits | None = None,
) -> RunSummary:
    """Export, check and upload the labels in ``out``.

    Args:
        out: A local output folder holding labels (labels/, images/).
        upload_to: roboflow://WORKSPACE/PROJECT to upload images + labels to, as one
            annotation batch named after this run; empty: no Roboflow upload.
        destination: s3://bucket/prefix to copy the outputs to; empty: none.
        settings: The classes to export; empty: those of out/approved.json.
        quality: warn: quality failures are reported; fail: they fail the run.
        sources: The S3-compatible endpoint of ``destination``, if not AWS.
        splits: Train/val/test fractions for the exports (by image content hash);
            empty: everything in train, plus a val split where a format needs one.
    """
    if settings is None:
        settings = approved_settings_task(out)
    return finish_run(
        out,
        settings,
        str(flow_run.get_id() or "local"),
        destination=destination or out,
        quality=quality,
        sources=sources,
        upload_to=upload_to,
        splits=splits,
    )
