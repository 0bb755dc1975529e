"""The autolabel flow: preview (free) -> approve thresholds -> label the batch."""

from __future__ import annotations

import itertools
from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import State

from flows.approval import end_without_approval, wait_for_approval
from flows.label import label_images
from flows.preview import preview
from tasks.approval import (
    ApprovalDecision,
    ApprovedSettings,
    load_approved,
    now_utc,
    save_approved,
    whoami,
)
from tasks.credits import CreditAccount
from tasks.preview import DEFAULT_SAMPLE_SIZE
from tasks.preview_report import PreviewSummary, show_preview_task
from tasks.report import RunSummary
from tasks.settings import LabelSettings
from tasks.sources import SourceOptions

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
) -> RunSummary | State:
    """Preview, wait for approval, label; returns the batch's summary.

    Args:
        source: Folder of images (searched recursively), s3://bucket/prefix or
            roboflow://workspace/project[/batch].
        out: Output folder: preview/, approved.json and the batch's outputs.
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
    """
    if reuse_approved:
        approved = load_approved_task(out, settings)
        return label_images(
            source=source,
            out=out,
            settings=approved.settings,
            credits=credits,
            quality=quality,
            sources=sources,
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
        out=out,
        settings=settings,
        credits=credits,
        quality=quality,
        sources=sources,
    )


def _below_floor(settings: LabelSettings, summary: PreviewSummary) -> bool:
    return settings.thresholds.floor(settings.ontology) < summary.floor


@task(name="take-thresholds-as-given", cache_policy=NO_CACHE)
def as_given_task(
    settings: LabelSettings, approved_by: str | None = None
) -> ApprovalDecision:
    """``--approve`` (or the review page): the thresholds given are the approved ones,
    no waiting."""
    names = settings.ontology.class_names
    thresholds = settings.thresholds.model_copy(
        update={"per_class": {n: settings.thresholds.for_class(n) for n in names}}
    )
    return ApprovalDecision(
        decision="approve",
        thresholds=thresholds,
        ontology=settings.ontology,
        approved_by=approved_by or whoami("--approve"),
        descriptions_changed=False,
    )


@task(name="save-approved", cache_policy=NO_CACHE)
def save_approved_task(
    out: str,
    settings: LabelSettings,
    summary: PreviewSummary,
    approved_by: str,
    sample_seed: int | None,
) -> ApprovedSettings:
    """Save the approved settings as ``out/approved.json`` for later runs to reuse."""
    approved = ApprovedSettings(
        settings=settings,
        approved_by=approved_by or "Prefect UI (no name given)",
        approved_at=now_utc(),
        flow_run_id=str(flow_run.get_id()) if flow_run.get_id() else None,
        sample=summary.sample,
        sample_seed=sample_seed,
        preview_counts=summary.counts,
    )
    save_approved(out, approved)
    return approved


@task(name="load-approved", cache_policy=NO_CACHE)
def load_approved_task(out: str, runtime: LabelSettings | None) -> ApprovedSettings:
    """``out/approved.json``, with device/batch/chunk size from ``runtime`` if given.

    Those three change how labels are computed, not which: a dataset approved on a
    laptop can be labeled on a GPU worker.
    """
    approved = load_approved(out)
    if runtime is None:
        return approved
    data = approved.settings.model_dump()
    data["model"]["device"] = runtime.model.device
    data["model"]["batch_size"] = runtime.model.batch_size
    data["chunk_size"] = runtime.chunk_size
    return approved.model_copy(update={"settings": LabelSettings.model_validate(data)})
