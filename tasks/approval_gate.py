"""Waiting for a person's approval inside the ``autolabel`` flow.

Called at flow level (never from a task: a suspend must be the flow's own). Run
interactively, the flow pauses: the process waits (``pause_flow_run``), keeping the
model it loaded. Run from a deployment, it suspends instead (``suspend_flow_run``): the
process exits and frees its GPU, and the worker reruns the flow from the top once
resumed; the preview then comes from its cache (``tasks.preview``) and the pause keys
below are deterministic, so the rerun walks past every answered pause without asking
again.
"""

from __future__ import annotations

import shlex

from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelled, Cancelling, State

from tasks.approval import (
    ApprovalDecision,
    ApprovalError,
    ApprovalRequest,
    ApprovedSettings,
    ApprovedTruth,
    approval_form,
    decide,
    fetch_approved,
    load_approved,
    notify_waiting,
    now_utc,
    save_approved,
    whoami,
)
from tasks.markdown import markdown_cell, markdown_text
from tasks.preview_report import PreviewSummary, truth_markdown
from tasks.settings import LabelSettings, with_every_threshold, with_runtime

APPROVAL_ARTIFACT = "autolabel-approval"


def wait_for_approval(
    settings: LabelSettings,
    summary: PreviewSummary,
    *,
    round_: int,
    timeout: int,
    poll_interval: float,
) -> ApprovalDecision | None:
    """Wait until a valid answer arrives; None if none came within ``timeout`` seconds.

    Answers the server accepted but that are still unusable (descriptions that make an
    invalid ontology) are refused here: the reason is logged and shown on the form, and
    the run pauses again.
    """
    logger = get_run_logger()
    error: str | None = None
    attempt = 0
    while True:
        attempt += 1
        request = _request(settings, summary, timeout)
        text = _instructions(request, summary, error)
        create_markdown_artifact(
            markdown=text,
            key=APPROVAL_ARTIFACT,
            description="Waiting for approval of the per-class thresholds",
        )
        notify_waiting(request)
        form = approval_form(settings, description=text)
        key = f"approval-{round_}-{attempt}"
        try:
            if deployment.get_id():
                answer = suspend_flow_run(wait_for_input=form, timeout=timeout, key=key)
            else:
                answer = pause_flow_run(
                    wait_for_input=form,
                    timeout=timeout,
                    poll_interval=poll_interval,  # type: ignore[arg-type]
                    key=key,
                )
        except FlowPauseTimeout:
            return None
        try:
            return decide(settings, answer)
        except ApprovalError as refused:
            error = str(refused)
            logger.error("Approval refused, still waiting: %s", error)


def end_without_approval(out: str, timeout: int) -> State:
    """The final state of a run that was never approved: Cancelled, nothing labeled.

    A pause that timed out can no longer finish as Completed (Prefect turns that into
    Failed), so the run goes through Cancelling to Cancelled with a message that says
    what happened. Nothing was labeled or charged; the preview stays under ``out``.
    """
    run_id = flow_run.get_id()
    kept = f"nothing labeled, nothing charged; the preview stays in {out}/preview"
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state if run_id else None
        if state is not None and (state.is_cancelled() or state.is_cancelling()):
            message = f"cancelled while waiting for approval: {kept}"
        else:
            message = f"approval timed out after {timeout} s: {kept}"
            if run_id:
                client.set_flow_run_state(run_id, Cancelling(message=message))
    get_run_logger().warning(message)
    return Cancelled(message=message)


def approve_command(
    flow_run_id: str, thresholds: dict[str, float], api_url: str | None
) -> str:
    """The exact shell command that approves ``flow_run_id`` at ``thresholds``."""
    parts = ["autolabel", "approve", flow_run_id]
    for name, value in thresholds.items():
        parts += ["--threshold", f"{name}={value:g}"]
    command = shlex.join(parts)
    return f"PREFECT_API_URL={shlex.quote(api_url)} {command}" if api_url else command


def _request(
    settings: LabelSettings, summary: PreviewSummary, timeout: int
) -> ApprovalRequest:
    run_id = str(flow_run.get_id())
    temporary_api = None if PREFECT_API_URL.value() else _temporary_api_url()
    ui_url = flow_run.get_flow_run_ui_url() if PREFECT_API_URL.value() else None
    if temporary_api:
        ui_url = f"{temporary_api.removesuffix('/api')}/runs/flow-run/{run_id}"
    thresholds = settings.thresholds.for_classes(settings.ontology.class_names)
    return ApprovalRequest(
        flow_run_id=run_id,
        thresholds=thresholds,
        counts=dict(summary.counts),
        command=approve_command(run_id, thresholds, temporary_api),
        ui_url=ui_url,
        timeout_s=timeout,
    )


def _temporary_api_url() -> str | None:
    """The API URL of Prefect's temporary server, when no PREFECT_API_URL is set."""
    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/") or None


def _instructions(
    request: ApprovalRequest, summary: PreviewSummary, error: str | None
) -> str:
    lines = ["# Waiting for approval", ""]
    if error:
        lines += [f"**Refused:** {markdown_text(error)}. Still waiting.", ""]
    lines += [
        "Choose a threshold per class (the preview shows what each keeps), then "
        "**Resume** this run with decision *approve* to label the whole batch, or "
        "*revise* to see the preview again (changed descriptions re-run it on the "
        "same sample images). Or from a shell:",
        "",
        f"    {request.command}",
        "",
        "| class | threshold | shown / total |",
        "| --- | --- | --- |",
    ]
    for name, (shown, total) in request.counts.items():
        threshold = request.thresholds.get(name, 0.0)
        lines.append(f"| {markdown_cell(name)} | {threshold:g} | {shown}/{total} |")
    lines += truth_markdown(summary)
    lines += [
        "",
        f"Test results: {summary.credits} credits. Without an answer within "
        f"{request.timeout_s} s the run ends: nothing is labeled or charged.",
    ]
    return "\n".join(lines) + "\n"


@task(name="take-thresholds-as-given", cache_policy=NO_CACHE)
def as_given_task(
    settings: LabelSettings, approved_by: str | None = None
) -> ApprovalDecision:
    """``--approve`` (or the review page): the thresholds given are the approved ones,
    no waiting."""
    return ApprovalDecision(
        decision="approve",
        thresholds=with_every_threshold(settings).thresholds,
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
        truth=ApprovedTruth.from_scores(summary.truth_source or "", summary.truth)
        if summary.truth
        else None,
    )
    save_approved(out, approved)
    return approved


@task(name="load-approved", cache_policy=NO_CACHE)
def load_approved_task(
    out: str,
    runtime: LabelSettings | None,
    destination: str | None = None,
    endpoint_url: str | None = None,
) -> ApprovedSettings:
    """``out/approved.json``, with device/batch/chunk size from ``runtime`` if given.

    Those three change how labels are computed, not which: a dataset approved on a
    laptop can be labeled on a GPU worker. With an s3:// ``destination`` the file is
    fetched from the bucket when ``out`` (its staging folder) has none.
    """
    if destination is not None:
        fetch_approved(destination, out, endpoint_url)
    approved = load_approved(out)
    if runtime is None:
        return approved
    settings = with_runtime(
        approved.settings,
        device=runtime.model.device,
        batch_size=runtime.model.batch_size,
        chunk_size=runtime.chunk_size,
    )
    return approved.model_copy(update={"settings": settings})
