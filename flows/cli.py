"""The ``autolabel`` command line: starts the flows with a progress bar on the terminal.

Exit codes: 0 done; 1 a source or model could not be used; 2 invalid options (ontology,
thresholds); 3 done, but some images were skipped (listed in report.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_options import (
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_QUALITY,
    EXIT_SKIPPED,
    EXIT_USAGE,
    BackendOption,
    BatchSizeOption,
    ChunkSizeOption,
    ClassNamesOption,
    ClassOption,
    DatasetOption,
    DeviceOption,
    DtypeOption,
    FpsOption,
    LedgerOption,
    MapOption,
    MaxCreditsOption,
    ModelOption,
    NmsIouOption,
    NmsOption,
    OntologyOption,
    PretrainedOption,
    PromptModeOption,
    PromptTemplateOption,
    QualityOption,
    RatesOption,
    S3EndpointOption,
    SamCheckpointOption,
    SamModelTypeOption,
    TaskOption,
    ThresholdOption,
    TorchvisionArchOption,
    UploadToOption,
    console,
    credit_account_or_exit,
    labeled_dataset,
    model_options,
    print_error,
    progress_bar,
    quality_or_exit,
    settings_or_exit,
    warm_model_or_exit,
)
from model_loaders.protocol import CLASSIFICATION_TASKS
from tasks.credits import CreditLedger, format_credits, redact, resolve_ledger_path
from tasks.images import SourceError
from tasks.quality import QualityCheckFailed
from tasks.report import RunSummary
from tasks.roboflow_api import RoboflowAccessError
from tasks.s3 import is_s3, staging_folder
from tasks.sources import SourceOptions, canonical_source

app = typer.Typer(
    help="Label images with foundation models, through Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Label images with foundation models, through Prefect flows."""


@app.command()
def label(
    source: Annotated[
        str,
        typer.Argument(
            help="Folder (searched recursively), s3://bucket/prefix or "
            "roboflow://workspace/project[/batch]."
        ),
    ],
    out: Annotated[
        str, typer.Option(help="Output folder, or s3://bucket/prefix.")
    ] = "out",
    classes: ClassOption = None,
    ontology: OntologyOption = None,
    threshold: ThresholdOption = None,
    task: TaskOption = "detect",
    model: ModelOption = None,
    backend: BackendOption = None,
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
    s3_endpoint_url: S3EndpointOption = None,
    fps: FpsOption = None,
    upload_to: UploadToOption = None,
    sam_checkpoint: SamCheckpointOption = None,
    sam_model_type: SamModelTypeOption = "vit_h",
    pretrained: PretrainedOption = None,
    prompt_template: PromptTemplateOption = "a photo of a {}",
    map_: MapOption = None,
    torchvision_arch: TorchvisionArchOption = None,
    class_names: ClassNamesOption = None,
) -> None:
    """Label images; write the label table, exports (COCO/YOLO, or classification
    layouts) and report.md to --out."""
    quality = quality_or_exit(quality)
    settings = settings_or_exit(
        classes=classes or [],
        ontology_file=ontology,
        threshold=threshold or [],
        nms=nms,
        nms_iou=nms_iou,
        chunk_size=chunk_size,
        model=dict(
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            prompt_mode=prompt_mode,
            **model_options(
                task=task,
                model=model,
                backend=backend,
                sam_checkpoint=sam_checkpoint,
                sam_model_type=sam_model_type,
                pretrained=pretrained,
                prompt_template=prompt_template,
                map_=map_,
                torchvision_arch=torchvision_arch,
                class_names=class_names,
                dataset=labeled_dataset(dataset, upload_to, source),
            ),
        ),
    )
    if upload_to and settings.model.task in CLASSIFICATION_TASKS:
        print_error(
            f"--upload-to sends boxes and masks, not --task {settings.model.task} "
            f"labels yet: upload {out}/classification/roboflow/ with the Roboflow "
            "CLI instead"
        )
        raise typer.Exit(EXIT_USAGE)
    local_out = staging_folder(out) if is_s3(out) else Path(out)
    account = credit_account_or_exit(
        out=local_out,
        source=canonical_source(source),
        settings=settings,
        ledger=credits_ledger,
        rates=credit_rates,
        dataset=dataset,
        max_credits=max_credits,
    )
    warm_model_or_exit(settings.model)

    from flows.label import label_images

    try:
        with progress_bar("Labeling"):
            summary = label_images(
                source=source,
                out=out,
                settings=settings,
                credits=account,
                quality=quality,
                sources=SourceOptions(s3_endpoint_url=s3_endpoint_url, fps=fps),
                upload_to=upload_to,
            )
    except (SourceError, RoboflowAccessError) as error:
        print_error(error)
        raise typer.Exit(EXIT_FAILED) from None
    except QualityCheckFailed as error:
        print_error(error)
        raise typer.Exit(EXIT_QUALITY) from None
    raise typer.Exit(report_run(summary, out))


def report_run(summary: RunSummary, out: str) -> int:
    """Print what a labeling run did; the exit code that says how it ended."""
    console.print(
        f"Labeled {summary.labeled} of {summary.images} images: "
        f"{summary.labels} labels "
        f"({', '.join(f'{k} {v}' for k, v in summary.per_class.items())}); "
        f"{format_credits(summary.credits_used or 0.0)} credits. "
        f"Outputs in {out}/ (report: {out.rstrip('/')}/report.md)."
    )
    if summary.upload is not None:
        upload = summary.upload
        console.print(
            f"Roboflow: {upload.uploaded} uploaded, {upload.skipped} already there, "
            f"{len(upload.failed)} failed."
        )
    if summary.budget_stop:
        print_error(
            f"stopped before labeling more: {summary.budget_stop}. "
            f"Labels made so far are kept in {out}/."
        )
        return EXIT_BUDGET
    if summary.skipped:
        console.print(f"[yellow]{len(summary.skipped)} image(s) skipped[/yellow]:")
        for path, reason in summary.skipped[:20]:
            console.print(f"  {path}: {reason}")
        return EXIT_SKIPPED
    return 0


@app.command()
def credits(
    out: Annotated[
        Path | None, typer.Option(help="Output folder whose ledger to show.")
    ] = None,
    ledger: Annotated[
        Path | None, typer.Option(help="Ledger file (instead of --out).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    runs: Annotated[bool, typer.Option(help="One line per run.")] = False,
) -> None:
    """Print the credit ledger: credits per dataset, model and task (or per run)."""
    path = ledger or resolve_ledger_path(out or Path("out"))
    if not path.is_file():
        print_error(f"no credit ledger at {path}")
        raise typer.Exit(EXIT_FAILED)
    book = CreditLedger(path)
    table = book.runs(dataset) if runs else book.totals(dataset)
    if "dataset" in table:
        table["dataset"] = table["dataset"].map(redact)
    console.print(table.to_string(index=False) if len(table) else "No charges yet.")
    console.print(f"Total: {format_credits(book.used(dataset))} credits")


# Test results, approval and the approved batch (flows/cli_review.py).
from flows import cli_review  # noqa: E402

app.command()(cli_review.preview)
app.command()(cli_review.run)
app.command()(cli_review.approve)

# Upload events and sharded batches on the work pool (flows/cli_deploy.py).
from flows import cli_deploy  # noqa: E402

app.command("notify-upload")(cli_deploy.notify_upload)
app.command("label-sharded")(cli_deploy.label_sharded)

# The review page in a browser (flows/cli_ui.py).
from flows import cli_ui  # noqa: E402

app.command()(cli_ui.ui)


if __name__ == "__main__":
    app()
