"""``autolabel run`` and ``approve``: preview a sample, wait for a person to approve the
thresholds, then label the batch.

Exit codes as ``autolabel label`` (see ``cli.output``), plus 6: the run ended without
approval (timed out or cancelled): nothing labeled, nothing charged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer
from rich.table import Table

from cli.options import (
    ClassChoices,
    CreditChoices,
    ModelChoices,
    OutputChoices,
    SourceArgument,
    SourceChoices,
    with_groups,
)
from cli.output import (
    EXIT_FAILED,
    EXIT_NOT_APPROVED,
    EXIT_QUALITY,
    EXIT_USAGE,
    console,
    exit_on,
    fail,
    print_error,
    progress_bar,
    report_run,
    shown,
    usage,
)
from cli.preview import (
    ImagesOption,
    SampleOption,
    SeedOption,
    TruthMapOption,
    TruthOption,
    check_sample,
    check_truth,
    check_truth_options,
    report_auto,
    split_auto,
    split_images,
)
from cli.settings import (
    account_or_exit,
    batch_settings,
    out_lock_or_exit,
    preflight_or_exit,
    warm_model_or_exit,
)
from tasks.preview import DEFAULT_SAMPLE_SIZE
from tasks.s3 import is_s3, local_folder
from tasks.settings import LabelSettings, SettingsError, choice, with_runtime
from tasks.sources import canonical_source
from tasks.splits import SplitError
from tasks.thresholds import ThresholdError, parse_threshold_options


@with_groups
def run(
    source: SourceArgument,
    out: Annotated[
        str, typer.Option(help="Output folder, or s3://bucket/prefix.")
    ] = "out",
    sample: SampleOption = DEFAULT_SAMPLE_SIZE,
    seed: SeedOption = 0,
    images: ImagesOption = None,
    approve: Annotated[
        bool,
        typer.Option(
            "--approve", help="Take the given thresholds as approved; do not wait."
        ),
    ] = False,
    reuse_approved: Annotated[
        bool,
        typer.Option(
            "--reuse-approved",
            help="Label with OUT/approved.json; no preview, no waiting.",
        ),
    ] = False,
    timeout: Annotated[
        int, typer.Option(min=1, help="Seconds to wait for approval.")
    ] = 3600,
    truth: TruthOption = None,
    truth_map: TruthMapOption = None,
    *,
    classes: ClassChoices,
    model: ModelChoices,
    output: OutputChoices,
    credits: CreditChoices,
    sources: SourceChoices,
) -> None:
    """Preview a sample, wait for approval of the thresholds, then label everything.

    While it waits it prints the flow run id and the `autolabel approve` command to
    type in another shell (or resume the run in the Prefect UI).
    """
    auto = split_auto(classes)
    check_truth_options(truth, truth_map)
    if auto and truth is None:
        usage("--threshold auto needs human labels: give --truth PATH")
    # An s3:// output: the preview and approval live in its local staging folder,
    # and every file goes to the bucket with the batch's outputs.
    work = local_folder(out)
    endpoint = sources.s3_endpoint_url
    if reuse_approved:
        if classes.classes or classes.ontology or classes.threshold or auto:
            usage(
                "--reuse-approved labels with the classes and thresholds of "
                f"{out}/approved.json: drop --class/--ontology/--threshold"
            )
        settings = _approved_settings(out, endpoint, model, output)
    else:
        settings = batch_settings(source, out, classes, model, output, credits)
    account = account_or_exit(
        credits,
        out=out,
        source=canonical_source(source),
        settings=settings,
        upload_to=output.upload_to,
        s3_endpoint_url=endpoint,
    )
    if not reuse_approved:
        check_sample(
            source, work, sources.options(), sample, seed, split_images(images)
        )
        if truth is not None:
            check_truth(truth, truth_map, settings.ontology.class_names)
    with out_lock_or_exit(out, "autolabel run", endpoint):
        warm_model_or_exit(settings)
        if truth is not None and not reuse_approved:
            settings = _preview_with_truth(
                source, work, settings, sample, seed, images, sources, truth,
                truth_map, auto,
            )  # fmt: skip

        from flows.autolabel import autolabel
        from tasks import approval

        listener = _WaitingPrinter()
        approval.add_waiting_listener(listener)
        batch = _BatchProgress()
        try:
            state = autolabel(
                source=source,
                out=str(out),
                settings=settings,
                sources=sources.options(),
                sample_size=sample,
                seed=seed,
                images=split_images(images),
                approve=approve,
                reuse_approved=reuse_approved,
                approval_timeout=timeout,
                credits=account,
                quality=output.quality,
                upload_to=output.upload_to,
                splits=output.splits(),
                return_state=True,
            )
        except KeyboardInterrupt:
            console.print(
                "Stopped: nothing more labeled; the preview stays in "
                f"{shown(str(work))}/preview."
            )
            raise typer.Exit(130) from None
        finally:
            batch.close()
            approval.remove_waiting_listener(listener)
        _finish(state, out, work, approved_here=approve)


def approve(
    run_id: Annotated[str, typer.Argument(help="The flow run id `run` printed.")],
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            help="0.35 (every class), name=0.5 (one class), or auto: each class at "
            "its F1-optimal threshold on the preview's human labels (--truth). "
            "Repeatable."
        ),
    ] = None,
    description: Annotated[
        list[str] | None,
        typer.Option(
            help='New descriptions: "name: description; other". Re-runs the preview '
            "on the same sample and waits again. Repeatable."
        ),
    ] = None,
    revise: Annotated[
        bool,
        typer.Option(
            "--revise", help="Show the preview at these thresholds; do not label yet."
        ),
    ] = False,
    approved_by: Annotated[
        str | None, typer.Option(help="Your name, recorded in approved.json.")
    ] = None,
) -> None:
    """Approve a waiting run's thresholds (the others keep their current value)."""
    from tasks.approval import ApprovalError, run_input_from_options, whoami

    auto = any(o.strip().lower() == "auto" for o in threshold or [])
    threshold = [o for o in threshold or [] if o.strip().lower() != "auto"]
    with exit_on(ThresholdError, code=EXIT_USAGE):
        for option in threshold:
            parse_threshold_options([option])
    try:
        flow_run_id = UUID(run_id)
    except ValueError:
        usage(f"{run_id!r} is not a flow run id (a UUID, as `autolabel run` printed)")
    schema = _paused_form(flow_run_id)
    if auto:
        threshold = _suggested_options(flow_run_id) + threshold
    decision = "revise" if revise or description else "approve"
    with exit_on(ApprovalError, code=EXIT_USAGE):
        run_input = run_input_from_options(
            schema,
            thresholds=threshold or [],
            descriptions=description or [],
            decision=decision,
            approved_by=approved_by or whoami("autolabel approve"),
        )

    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import resume_flow_run

    try:
        resume_flow_run(flow_run_id, run_input=run_input)
    except FlowPauseTimeout:
        fail(f"run {run_id} waited too long: it can no longer be resumed")
    except RuntimeError as error:  # the server refused the input; still paused
        usage(str(error).removeprefix("Cannot resume this run: "))
    console.print(
        f"Sent to run {run_id}: {decision}"
        + (" (the batch starts now)" if decision == "approve" else "")
    )


def _preview_with_truth(
    source, out, settings, sample, seed, images, sources, truth, truth_map, auto
) -> LabelSettings:
    """The preview with the sample's human labels attached (the flow's own preview
    then comes from its cache and keeps them); with ``--threshold auto`` the settings
    get each class's F1-optimal threshold."""
    from flows.preview import preview as preview_flow
    from tasks.preview_truth import auto_thresholds

    with console.status("Running the preview on the sample ..."):
        preview_flow(
            source=source,
            out=str(out),
            settings=settings,
            sample_size=sample,
            seed=seed,
            images=split_images(images),
            sources=sources.options(),
            truth=truth,
            truth_map=truth_map,
        )
    if not auto:
        return settings
    tuned, choices = auto_thresholds(out, settings)
    report_auto(choices)
    return settings.model_copy(update={"thresholds": tuned})


def _approved_settings(
    out: str, endpoint_url: str | None, model: ModelChoices, output: OutputChoices
) -> LabelSettings:
    """``OUT/approved.json`` (an s3:// OUT's: the bucket's copy when it is newer than
    this machine's) with this run's device, batch size and chunk size."""
    from botocore.exceptions import BotoCoreError, ClientError

    from tasks.approval import (
        ApprovalError,
        approved_path,
        fetch_approved,
        load_approved,
    )

    work = local_folder(out)
    if is_s3(out):  # a missing bucket is named as such, not as a missing file
        preflight_or_exit(source=None, out=out, s3_endpoint_url=endpoint_url)
        with exit_on(BotoCoreError, ClientError, code=EXIT_FAILED):
            fetch_approved(out, work, endpoint_url)
        if not approved_path(work).exists():
            usage(
                f"no approved settings in {out}/approved.json: run `autolabel run "
                f"SOURCE --out {out}` and approve its thresholds first"
            )
    with exit_on(ApprovalError, SettingsError, SplitError, code=EXIT_USAGE):
        choice("--quality", output.quality)
        output.splits()
        approved = load_approved(work)
    console.print(
        f"Reusing the settings {shown(approved.approved_by)} approved on "
        f"{approved.approved_at:%Y-%m-%d %H:%M} UTC "
        f"({shown(out.rstrip('/') + '/approved.json')})."
    )
    return with_runtime(
        approved.settings,
        device=model.device,
        batch_size=model.batch_size,
        chunk_size=output.chunk_size,
    )


def _suggested_options(flow_run_id: UUID) -> list[str]:
    """``--threshold auto`` for a waiting run: each class's F1-optimal threshold on
    the human labels of its preview (``name=value`` options, exact values); a class
    with nothing to tune on keeps its threshold, and the output says so."""
    from prefect import get_client

    from tasks.preview import PreviewError, load_record
    from tasks.preview_truth import auto_thresholds

    with get_client(sync_client=True) as client:
        out = (client.read_flow_run(flow_run_id).parameters or {}).get("out")
    if not out:
        fail(f"run {flow_run_id} names no output folder: give the thresholds")
    work = local_folder(out)  # an s3:// run's preview is in its staging folder
    with exit_on(PreviewError, code=EXIT_USAGE):
        _, choices = auto_thresholds(work, load_record(work).settings)
    report_auto(choices)
    return [f"{name}={choice.threshold!r}" for name, choice in choices.items()]


def _paused_form(flow_run_id: UUID) -> dict:
    """The approval form (JSON schema) the paused run waits for."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.input.actions import read_flow_run_input

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        fail(f"no flow run {flow_run_id} on this Prefect server (PREFECT_API_URL?)")
    except Exception as error:  # noqa: BLE001 - connection errors of every kind
        fail(f"cannot reach the Prefect server: {type(error).__name__}: {error}")
    state = run.state
    keyset = state.state_details.run_input_keyset if state else None
    if state is None or not state.is_paused() or not keyset:
        name = state.name if state else "no state"
        fail(f"run {flow_run_id} is not waiting for approval (it is {name})")
    schema = read_flow_run_input(keyset["schema"], flow_run_id=flow_run_id)
    if not isinstance(schema, dict):
        fail(f"run {flow_run_id} has no approval form")
    return schema


def _finish(state, out: str, work: Path, *, approved_here: bool) -> None:
    """Print how the run ended, and exit with the code that says so."""
    from tasks.approval import load_approved
    from tasks.quality import QualityCheckFailed
    from tasks.report import RunSummary

    if state.is_cancelled():
        console.print(f"Not approved: {shown(state.message)}", soft_wrap=True)
        raise typer.Exit(EXIT_NOT_APPROVED)
    result = state.result(raise_on_failure=False)
    if isinstance(result, QualityCheckFailed):
        print_error(result)
        raise typer.Exit(EXIT_QUALITY)
    if not state.is_completed() or not isinstance(result, RunSummary):
        fail(str(result if isinstance(result, BaseException) else state.message))
    if approved_here:
        counts = load_approved(work).preview_counts
        console.print(
            "Test results on the sample (0 credits) at the approved thresholds: "
            + shown(", ".join(f"{k} {n}/{total}" for k, (n, total) in counts.items())),
        )
    approved = f"{out.rstrip('/')}/approved.json"
    console.print(f"Approved settings: {shown(approved)}.", soft_wrap=True)
    raise typer.Exit(report_run(result, out))


class _WaitingPrinter:
    """Prints what to type while the flow waits for approval."""

    def waiting(self, request) -> None:
        table = Table("class", "threshold", "shown/total")
        for name, (kept, total) in request.counts.items():
            threshold = request.thresholds.get(name, 0.0)
            table.add_row(shown(name), f"{threshold:g}", f"{kept}/{total}")
        console.print(
            f"Preview ready (0 credits). Run {request.flow_run_id} waits for approval "
            f"(up to {request.timeout_s} s):"
        )
        console.print(table)
        console.print("Approve from another shell (change the numbers as you like):")
        console.print(f"  {shown(request.command)}", highlight=False, soft_wrap=True)
        if request.ui_url:
            console.print(
                f"or resume it in the Prefect UI: {shown(request.ui_url)}",
                soft_wrap=True,
            )


class _BatchProgress:
    """A progress bar that appears only when the batch starts (not while waiting)."""

    def __init__(self) -> None:
        from tasks import progress

        self._bar: progress_bar | None = None
        progress.add_listener(self)

    def expect(self, total: int) -> None:
        if self._bar is None:
            self._bar = progress_bar("Labeling")
            self._bar.__enter__()
            self._bar.listener.expect(total)  # it missed this call

    def advance(self, done: int) -> None:
        pass  # the bar's own listener counts

    def close(self) -> None:
        from tasks import progress

        progress.remove_listener(self)
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
