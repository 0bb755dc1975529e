"""Label a dataset's new images with the settings a person already approved for it.

Started by an ``autolabel.images.uploaded`` event (the images of one upload) or by a
schedule (every image of the source not labeled yet). Nobody is asked again: the
thresholds come from ``OUT/approved.json``, saved when the dataset's preview was
approved, and the labels are added to the dataset's output, charged to its ledger.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from flows.events import check_dataset_id
from flows.label import label_images
from tasks.approval import load_approved
from tasks.credits import CreditAccount, credit_kind, resolve_ledger_path
from tasks.label import ImageSelection
from tasks.report import RunSummary
from tasks.settings import LabelSettings
from tasks.sources import SourceOptions


def approved_settings(
    out: str,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> LabelSettings:
    """The dataset's approved settings, run on this worker's device if given.

    Device, batch size and chunk size change how labels are computed, not which: a
    dataset approved on a laptop can be labeled on a GPU worker.

    Raises:
        ApprovalError: If ``out`` holds no (valid) approved.json.
    """
    data = load_approved(out).settings.model_dump()
    if device is not None:
        data["model"]["device"] = device
    if batch_size is not None:
        data["model"]["batch_size"] = batch_size
    if chunk_size is not None:
        data["chunk_size"] = chunk_size
    return LabelSettings.model_validate(data)


def read_manifest(path: str) -> list[str]:
    """The images a manifest file lists: a JSON list, or one per line (# comments).

    Raises:
        ValueError: If the file is JSON but not a list of strings.
    """
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        items = json.loads(text)
        if not all(isinstance(item, str) for item in items):
            raise ValueError(f"manifest {path}: expected a JSON list of image paths")
        return items
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def wanted_images(images: list[str] | None, manifest: str | None) -> list[str] | None:
    """The images an upload names (event list + manifest); None: every new image."""
    if images is None and manifest is None:
        return None
    listed = list(images or []) + (read_manifest(manifest) if manifest else [])
    return list(dict.fromkeys(listed))


def dataset_account(
    out: str, dataset: str, settings: LabelSettings, max_credits: float | None
) -> CreditAccount:
    """The dataset's credit account: ``OUT/credits.sqlite``, booked to ``dataset``.

    Raises:
        UploadEventError: If ``dataset`` is not a valid dataset id.
    """
    check_dataset_id(dataset)
    return CreditAccount(
        ledger_path=str(resolve_ledger_path(out)),
        dataset=dataset,
        model=settings.model.model,
        task=credit_kind(settings.model),
        max_credits=max_credits,
    )


def dataset_lock(dataset: str) -> str:
    """Create (once) the one-slot concurrency limit that serializes a dataset's runs.

    A scan and an upload event of the same dataset at the same time would both see
    an image as new and label it into two chunks; one run at a time per dataset means
    the second one plans after the first has added its labels. Runs of different
    datasets never wait for each other. Returns the limit's name.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = f"autolabel-dataset-{check_dataset_id(dataset)}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Another run of the dataset may create it first.
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    return name


dataset_lock_task = task(dataset_lock, name="dataset-lock", cache_policy=NO_CACHE)
approved_settings_task = task(
    approved_settings, name="load-approved-settings", cache_policy=NO_CACHE
)
wanted_images_task = task(wanted_images, name="read-upload", cache_policy=NO_CACHE)


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
        )
