"""``autolabel label`` and ``autolabel credits``: label a source in one go; the
ledger."""

from __future__ import annotations

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
    EXIT_QUALITY,
    console,
    exit_on,
    fail,
    progress_bar,
    report_run,
)
from cli.settings import (
    account_or_exit,
    batch_settings,
    out_lock_or_exit,
    warm_model_or_exit,
)
from clients.roboflow import RoboflowAccessError
from tasks.credits import (
    CreditLedger,
    LedgerUnavailable,
    format_credits,
    is_database_url,
    redact,
    resolve_ledger_path,
)
from tasks.images import SourceError
from tasks.quality import QualityCheckFailed
from tasks.s3 import is_s3
from tasks.sources import canonical_source


@with_groups
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
    *,
    classes: ClassChoices,
    model: ModelChoices,
    output: OutputChoices,
    credits: CreditChoices,
    sources: SourceChoices,
) -> None:
    """Label images; write the label table, exports (COCO/YOLO, or classification
    layouts) and report.md to --out."""
    from cli.preview import split_auto

    auto = split_auto(classes)
    settings = batch_settings(source, out, classes, model, output, credits)
    if auto:
        settings = _auto_from_preview(out, settings)
    account = account_or_exit(
        credits,
        out=out,
        source=canonical_source(source),
        settings=settings,
        upload_to=output.upload_to,
        s3_endpoint_url=sources.s3_endpoint_url,
    )
    from flows.label import label_images

    with (
        out_lock_or_exit(out, "autolabel label", sources.s3_endpoint_url),
        exit_on(SourceError, RoboflowAccessError, code=EXIT_FAILED),
        exit_on(QualityCheckFailed, code=EXIT_QUALITY),
    ):
        warm_model_or_exit(settings)
        with progress_bar("Labeling"):
            summary = label_images(
                source=source,
                out=out,
                settings=settings,
                credits=account,
                quality=output.quality,
                sources=sources.options(),
                upload_to=output.upload_to,
                splits=output.splits(),
            )
    raise typer.Exit(report_run(summary, out))


def _auto_from_preview(out: str, settings):
    """``--threshold auto``: each class's F1-optimal threshold on the human labels of
    the preview in OUT (``autolabel preview SOURCE --out OUT --truth PATH`` first)."""
    from cli.output import EXIT_USAGE, usage
    from cli.preview import report_auto
    from tasks.preview import PreviewError, load_record
    from tasks.preview_truth import auto_thresholds

    if is_s3(out):
        usage("--threshold auto reads the preview in a local --out folder")
    with exit_on(PreviewError, code=EXIT_USAGE):
        previewed = load_record(out).settings
    if previewed.ontology.class_names != settings.ontology.class_names:
        usage(
            f"--threshold auto: the preview in {out} has the classes "
            f"{previewed.ontology.class_names}, not these: preview them first"
        )
    with exit_on(PreviewError, code=EXIT_USAGE):
        tuned, choices = auto_thresholds(
            out, previewed.model_copy(update={"thresholds": settings.thresholds})
        )
    report_auto(choices)
    return settings.model_copy(update={"thresholds": tuned})


def credits(
    out: Annotated[
        Path | None, typer.Option(help="Output folder whose ledger to show.")
    ] = None,
    ledger: Annotated[
        str | None,
        typer.Option(help="Ledger file or postgresql:// URL (instead of --out)."),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    runs: Annotated[bool, typer.Option(help="One line per run.")] = False,
) -> None:
    """Print the credit ledger: credits per dataset, model and task (or per run)."""
    location = resolve_ledger_path(out or Path("out"), ledger)
    if not is_database_url(location) and not Path(location).is_file():
        fail(f"no credit ledger at {location}")
    with exit_on(LedgerUnavailable, code=EXIT_FAILED):
        book = CreditLedger(location)
    table = book.runs(dataset) if runs else book.totals(dataset)
    if "dataset" in table:
        table["dataset"] = table["dataset"].map(redact)
    console.print(
        table.to_string(index=False) if len(table) else "No charges yet.",
        markup=False,
        highlight=False,
    )
    console.print(f"Total: {format_credits(book.used(dataset))} credits")
