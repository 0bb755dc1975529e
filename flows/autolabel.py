"""The autolabel flow: preview (free) -> approve thresholds -> label the batch."""

from __future__ import annotations

import itertools
from typing import Literal

from prefect import flow
from prefect.states import State

from flows.label import label_images
from flows.preview import preview
from tasks.approval_gate import (
    as_given_task,
    end_without_approval,
    load_approved_task,
    save_approved_task,
    wait_for_approval,
)
from tasks.credits import CreditAccount
from tasks.preview import DEFAULT_SAMPLE_SIZE
from tasks.preview_report import PreviewSummary, show_preview_task
from tasks.report import RunSummary
from tasks.s3 import local_folder
from tasks.settings import LabelSettings
from tasks.sources import SourceOptions
from tasks.splits import Splits

DEFAULT_APPROVAL_TIMEOUT = 3600


@flow(
    name="autolabel",
    description="Test results on a sample (free), wait for per-class thresholds to be "
    "approved, then label the whole batch with exactly those thresholds.",
)
def autolabel(
    source: str,
    out: str,
    settings: LabelSettings | None = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    images: list[str] | None = None,
    approve: bool = False,
    approved_by: str | None = None,
    reuse_approved: bool = False,
    approval_timeout: int = DEFAULT_APPROVAL_TIMEOUT,
    poll_interval: float = 2.0,
    credits: CreditAccount | None = None,
    quality: Literal["warn", "fail"] = "warn",
    sources: SourceOptions | None = None,
    upload_to: str | None = None,
    splits: Splits | None = None,
) -> RunSummary | State:
    """Preview, wait for approval, label; returns the batch's summary.

    Args:
        source: Folder of images (searched recursively), s3://bucket/prefix or
            roboflow://workspace/project[/batch].
        out: Output folder: preview/, approved.json and the batch's outputs; or
            s3://bucket/prefix: written in a local staging folder, uploaded at the end
            of the batch (``approved.json`` is fetched from there for
            ``reuse_approved`` on a machine that has none).
        settings: Classes, model, starting thresholds, NMS. With ``reuse_approved``
            only its device, batch size and chunk size are used (may be omitted).
        sample_size: Images in the random preview sample.
        seed: Seed of the sample (same seed, same sample).
        images: Relative paths to preview instead of a random sample.
        approve: Take ``settings``' thresholds as approved without waiting.
        approved_by: Who approved them that way, for ``approved.json`` (default:
            this user and host, "--approve").
        reuse_approved: Skip preview and approval; label with ``out/approved.json``.
        approval_timeout: Seconds to wait for approval before ending, unlabeled.
        poll_interval: Seconds between checks for an answer while paused.
        credits: The ledger the batch is charged to (the preview never is).
        quality: warn: quality failures are reported; fail: they fail the run.
        sources: How to reach the source (S3 endpoint, video frames per second).
        upload_to: roboflow://WORKSPACE/PROJECT to re-upload the labeled batch to.
        splits: Train/val/test fractions for the exports (by image content hash);
            empty: everything in train, plus a val split where a format needs one.
    """
    destination, out = out, str(local_folder(out))
    if reuse_approved:
        endpoint = (sources or SourceOptions()).s3_endpoint_url
        approved = load_approved_task(out, settings, destination, endpoint)
        return label_images(
            source=source,
            out=destination,
            settings=approved.settings,
            credits=credits,
            quality=quality,
            sources=sources,
            upload_to=upload_to,
            splits=splits,
        )
    if settings is None:
        raise ValueError("settings are required unless reuse_approved is set")

    summary = preview(
        source=source,
        out=out,
        settings=settings,
        sample_size=sample_size,
        seed=seed,
        images=images,
        sources=sources,
    )
    sample_seed = summary.seed  # reruns pin the same images, so they record none
    for round_ in itertools.count(1):
        if approve:
            decision = as_given_task(settings, approved_by)
        else:
            decision = wait_for_approval(
                settings,
                summary,
                round_=round_,
                timeout=approval_timeout,
                poll_interval=poll_interval,
            )
        if decision is None:
            return end_without_approval(out, approval_timeout)
        settings = decision.apply(settings)
        if decision.descriptions_changed or _below_floor(settings, summary):
            # Same images as before, whatever the seed would draw now.
            summary = preview(
                source=source,
                out=out,
                settings=settings,
                images=summary.sample,
                sources=sources,
            )
        else:  # the preview (and approved.json) show the thresholds just chosen
            summary = show_preview_task(out, settings.thresholds)
        if decision.decision == "approve" and not decision.descriptions_changed:
            break

    save_approved_task(out, settings, summary, decision.approved_by, sample_seed)
    return label_images(
        source=source,
        out=destination,
        settings=settings,
        credits=credits,
        quality=quality,
        sources=sources,
        upload_to=upload_to,
        splits=splits,
    )


def _below_floor(settings: LabelSettings, summary: PreviewSummary) -> bool:
    return settings.thresholds.floor(settings.ontology) < summary.floor
