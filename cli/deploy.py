"""``autolabel notify-upload`` and ``label-sharded``: commands that talk to deployments.

Both need the Prefect server the deployments and workers use (PREFECT_API_URL): an event
sent to, or a shard started on, Prefect's temporary local server would reach no worker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cli.options import (
    ClassChoices,
    CreditChoices,
    ModelChoices,
    OutputChoices,
    SourceChoices,
    with_groups,
)
from cli.output import (
    EXIT_FAILED,
    EXIT_USAGE,
    console,
    exit_on,
    fail,
    report_run,
    shown,
)
from cli.settings import (
    account_or_exit,
    batch_settings,
    out_lock_or_exit,
)
from tasks.credits import is_database_url
from tasks.s3 import is_s3


def notify_upload(
    dataset: Annotated[
        str, typer.Argument(help="Dataset id (letters, digits, '-', '_').")
    ],
    out: Annotated[
        str, typer.Option(help="The dataset's output folder (holds approved.json).")
    ],
    source: Annotated[
        str, typer.Option(help="Where the dataset's images are (folder or URI).")
    ],
    image: Annotated[
        list[str] | None,
        typer.Option(
            help="A new image, relative to --source (or a URI). Repeatable; "
            "none and no --manifest: every image not labeled yet."
        ),
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option(help="File listing the new images (one per line or JSON)."),
    ] = None,
    print_curl: Annotated[
        bool,
        typer.Option(
            "--print-curl",
            help="Print the same event as a curl POST to /api/events; send nothing.",
        ),
    ] = False,
) -> None:
    """Tell the label-new-uploads deployment that DATASET has new images."""
    from tasks.upload_events import (
        UploadEventError,
        check_dataset_id,
        send_upload_event,
        upload_event_curl,
    )

    with exit_on(UploadEventError, code=EXIT_USAGE):
        check_dataset_id(dataset)
    out, source = _worker_path(out), _worker_path(source)
    manifest = _worker_path(manifest) if manifest else None
    api_url = _api_url()
    if print_curl:
        typer.echo(
            upload_event_curl(
                api_url or "http://127.0.0.1:4200/api",
                dataset,
                out,
                source,
                image,
                manifest=manifest,
            )
        )
        return
    if not api_url:
        fail(
            "set PREFECT_API_URL to the server your deployments run on "
            "(e.g. http://127.0.0.1:4200/api)"
        )
    try:
        event_id = send_upload_event(dataset, out, source, image, manifest=manifest)
    except Exception as error:  # connection refused, TLS, auth: one line, exit 1
        fail(f"could not send the event to {api_url}: {error}")
    count = f"{len(image)} image(s)" if image else "every image not labeled yet"
    console.print(
        f"Sent autolabel.images.uploaded for dataset {dataset} ({count}) to "
        f"{shown(api_url)}; event {event_id}.",
    )


@with_groups
def label_sharded(
    source: Annotated[
        str,
        typer.Argument(help="Folder every worker reads at the same path, or a URI."),
    ],
    out: Annotated[
        str,
        typer.Option(
            help="Output folder every worker writes (shared), or s3://bucket/prefix "
            "(no shared disk: shards put their results there)."
        ),
    ] = "out",
    shards: Annotated[int, typer.Option(min=1, help="Shard runs to fan out.")] = 4,
    deployment: Annotated[
        str, typer.Option(help="The label-images deployment the shards run as.")
    ] = "label-images/label-shard",
    max_attempts: Annotated[
        int, typer.Option(min=1, help="Runs per shard before giving up.")
    ] = 3,
    shard_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds a shard run may run.")
    ] = 6 * 3600.0,
    stale_after: Annotated[
        float,
        typer.Option(min=1, help="Seconds without a heartbeat before a run is lost."),
    ] = 600.0,
    poll_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between checks on the shards.")
    ] = 5.0,
    *,
    classes: ClassChoices,
    model: ModelChoices,
    output: OutputChoices,
    credits: CreditChoices,
    sources: SourceChoices,
) -> None:
    """Label a big batch on the work pool's workers: shards out, one merged result.

    This process plans and merges; the shards run as the label-images deployment on
    `prefect worker start --pool ...` workers, which must see SOURCE and --out at the
    same paths, or reach them as s3:// URIs (then no disk is shared; give them a
    --credits-ledger postgresql://... too).
    """
    settings = batch_settings(source, out, classes, model, output, credits)
    if not _api_url():
        fail("set PREFECT_API_URL to the server your workers poll")
    out, source = _worker_path(out), _worker_path(source)
    account = account_or_exit(
        credits,
        out=out,
        source=source,
        settings=settings,
        upload_to=output.upload_to,
        s3_endpoint_url=sources.s3_endpoint_url,
    )
    if is_s3(out) and not is_database_url(account.ledger_path):
        console.print(
            f"Note: the credit ledger {shown(account.ledger_path)} is a file on this "
            "machine; workers on other machines need --credits-ledger "
            "postgresql://... (or AUTOLABEL_CREDITS_LEDGER).",
            markup=False,
        )

    from flows.label_sharded import label_sharded as label_sharded_flow
    from tasks.shards import ShardsFailed

    with (
        out_lock_or_exit(out, "autolabel label-sharded", sources.s3_endpoint_url),
        exit_on(ShardsFailed, ValueError, code=EXIT_FAILED),
    ):
        summary = label_sharded_flow(
            source=source,
            out=out,
            settings=settings,
            shards=shards,
            deployment=deployment,
            credits=account,
            quality=output.quality,
            sources=sources.options(),
            upload_to=output.upload_to,
            splits=output.splits(),
            max_attempts=max_attempts,
            shard_timeout_s=shard_timeout,
            stale_after_s=stale_after,
            poll_interval_s=poll_interval,
        )
    raise typer.Exit(report_run(summary, out))


def _worker_path(value: str) -> str:
    """A URI as given; a local path made absolute (workers start elsewhere)."""
    return value if "://" in value else str(Path(value).expanduser().resolve())


def _api_url() -> str | None:
    """The Prefect server the deployments run on: PREFECT_API_URL, from the
    environment or the active Prefect profile."""
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None
