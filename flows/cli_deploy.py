"""``autolabel notify-upload`` and ``label-sharded``: commands that talk to deployments.

Both need the Prefect server the deployments and workers use (PREFECT_API_URL): an event
sent to, or a shard started on, Prefect's temporary local server would reach no worker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_options import (
    EXIT_FAILED,
    EXIT_USAGE,
    BatchSizeOption,
    ChunkSizeOption,
    ClassOption,
    DatasetOption,
    DeviceOption,
    DtypeOption,
    LedgerOption,
    MaxCreditsOption,
    ModelOption,
    NmsIouOption,
    NmsOption,
    OntologyOption,
    PromptModeOption,
    QualityOption,
    RatesOption,
    ThresholdOption,
    console,
    credit_account_or_exit,
    detection_settings_or_exit,
    print_error,
    quality_or_exit,
)
from model_loaders.protocol import DEFAULT_GROUNDING_DINO


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
    from flows.events import (
        UploadEventError,
        check_dataset_id,
        send_upload_event,
        upload_event_curl,
    )

    try:
        check_dataset_id(dataset)
    except UploadEventError as error:
        print_error(error)
        raise typer.Exit(EXIT_USAGE) from None
    out, source = _worker_path(out), _worker_path(source)
    manifest = _worker_path(manifest) if manifest else None
    api_url = os.environ.get("PREFECT_API_URL") or _configured_api_url()
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
        print_error(
            "set PREFECT_API_URL to the server your deployments run on "
            "(e.g. http://127.0.0.1:4200/api)"
        )
        raise typer.Exit(EXIT_FAILED)
    try:
        event_id = send_upload_event(dataset, out, source, image, manifest=manifest)
    except Exception as error:  # connection refused, TLS, auth: one line, exit 1
        print_error(f"could not send the event to {api_url}: {error}")
        raise typer.Exit(EXIT_FAILED) from None
    count = f"{len(image)} image(s)" if image else "every image not labeled yet"
    console.print(
        f"Sent autolabel.images.uploaded for dataset {dataset} ({count}) to "
        f"{api_url}; event {event_id}."
    )


def label_sharded(
    source: Annotated[
        str,
        typer.Argument(help="Folder every worker reads at the same path, or a URI."),
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder every worker writes (shared).")
    ] = Path("out"),
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
    classes: ClassOption = None,
    ontology: OntologyOption = None,
    threshold: ThresholdOption = None,
    model: ModelOption = DEFAULT_GROUNDING_DINO,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    batch_size: BatchSizeOption = 8,
    chunk_size: ChunkSizeOption = 128,
    prompt_mode: PromptModeOption = "joint",
    nms: NmsOption = "class",
    nms_iou: NmsIouOption = 0.5,
    max_credits: MaxCreditsOption = None,
    credits_ledger: LedgerOption = None,
    credit_rates: RatesOption = None,
    dataset: DatasetOption = None,
    quality: QualityOption = "warn",
) -> None:
    """Label a big batch on the work pool's workers: shards out, one merged result.

    This process plans and merges; the shards run as the label-images deployment on
    `prefect worker start --pool ...` workers, which must see SOURCE and --out at the
    same paths.
    """
    quality = quality_or_exit(quality)
    settings = detection_settings_or_exit(
        classes, ontology, threshold, model, device, dtype, batch_size, chunk_size,
        prompt_mode, nms, nms_iou,
    )  # fmt: skip
    if not (os.environ.get("PREFECT_API_URL") or _configured_api_url()):
        print_error("set PREFECT_API_URL to the server your workers poll")
        raise typer.Exit(EXIT_FAILED)
    out = out.resolve()
    source = _worker_path(source)
    account = credit_account_or_exit(
        out=out,
        source=source,
        settings=settings,
        ledger=credits_ledger,
        rates=credit_rates,
        dataset=dataset,
        max_credits=max_credits,
    )

    from flows.cli import report_run
    from flows.scale_out import ShardsFailed
    from flows.scale_out import label_sharded as label_sharded_flow

    try:
        summary = label_sharded_flow(
            source=source,
            out=str(out),
            settings=settings,
            shards=shards,
            deployment=deployment,
            credits=account,
            quality=quality,
            max_attempts=max_attempts,
            shard_timeout_s=shard_timeout,
            stale_after_s=stale_after,
            poll_interval_s=poll_interval,
        )
    except (ShardsFailed, ValueError) as error:
        print_error(error)
        raise typer.Exit(EXIT_FAILED) from None
    raise typer.Exit(report_run(summary, str(out)))


def _worker_path(value: str) -> str:
    """A URI as given; a local path made absolute (workers start elsewhere)."""
    return value if "://" in value else str(Path(value).expanduser().resolve())


def _configured_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None
