"""Label a dataset's new images with the settings a person already approved for it.

Started by an ``autolabel.images.uploaded`` event (the images of one upload) or by a
schedule (every image of the source not labeled yet). Nobody is asked again: the
thresholds come from ``OUT/approved.json``, saved when the dataset's preview was
approved, and the labels are added to the dataset's output, charged to its ledger.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.concurrency.sync import concurrency

from flows.label import label_images
from tasks.approval import approved_settings_task
from tasks.label import ImageSelection
from tasks.report import RunSummary
from tasks.sources import SourceOptions
from tasks.splits import Splits
from tasks.upload_events import dataset_account, dataset_lock_task, wanted_images_task


@flow(
    name="label-new-uploads",
    description="Label a dataset's new images (an upload event, or a scheduled scan) "
    "with its approved thresholds, adding them to its outputs; no approval asked.",
)
def label_new_uploads(
    dataset: str,
    out: str,
    source: str,
    images: list[str] | None = None,
    manifest: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    max_credits: float | None = None,
    quality: Literal["warn", "fail"] = "warn",
    sources: SourceOptions | None = None,
    splits: Splits | None = None,
) -> RunSummary:
    """Label the images of ``source`` not in ``out`` yet, with its approved settings.

    Args:
        dataset: The dataset id (letters, digits, '-', '_'): what the credits are
            booked to, and what upload events name.
        out: The dataset's output folder, holding approved.json (approve a preview
            first: `autolabel run`) and the labels added to.
        source: Where the dataset's images are: a folder every worker can read,
            s3://bucket/prefix or roboflow://workspace/project.
        images: Only these new images (paths relative to source, or URIs), as an
            upload event lists them; left empty: every image not labeled yet.
        manifest: A file listing the new images (one per line, or a JSON list), for
            uploads too big for an event.
        device: Run the model here instead of the approved device (cuda on a GPU
            worker); empty: as approved.
        batch_size: Images per forward pass; empty: as approved.
        chunk_size: Images per labeling task; empty: as approved.
        max_credits: Stop before this run would charge more credits; empty: no cap.
        quality: warn: quality failures are reported; fail: they fail the run.
        sources: How to reach an S3-compatible store; the frame rate for videos.
        splits: Train/val/test fractions for the exports (by image content hash);
            empty: everything in train, plus a val split where a format needs one.
    """
    settings = approved_settings_task(
        out, device=device, batch_size=batch_size, chunk_size=chunk_size
    )
    wanted = wanted_images_task(images, manifest)
    account = dataset_account(out, dataset, settings, max_credits)
    with concurrency(dataset_lock_task(dataset), occupy=1, strict=True):
        return label_images(
            source=source,
            out=out,
            settings=settings,
            credits=account,
            quality=quality,
            sources=sources,
            selection=ImageSelection(only_new=True, images=wanted),
            splits=splits,
        )
