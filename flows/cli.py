"""The ``autolabel`` command line: starts the flows with a progress bar on the terminal.

Exit codes: 0 done; 1 a source or model could not be used; 2 invalid options (ontology,
thresholds); 3 done, but some images were skipped (listed in report.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_options import (
    EXIT_FAILED,
    EXIT_SKIPPED,
    BatchSizeOption,
    ChunkSizeOption,
    ClassOption,
    DeviceOption,
    DtypeOption,
    ModelOption,
    NmsIouOption,
    NmsOption,
    OntologyOption,
    PromptModeOption,
    ThresholdOption,
    console,
    print_error,
    progress_bar,
    settings_or_exit,
    warm_model_or_exit,
)
from model_loaders.protocol import DEFAULT_GROUNDING_DINO
from tasks.images import SourceError

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
        Path, typer.Argument(help="Folder of images (searched recursively).")
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out"),
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
) -> None:
    """Label a folder of images; write labels (Parquet), COCO, YOLO and report.md to --out."""
    settings = settings_or_exit(
        classes=classes or [],
        ontology_file=ontology,
        threshold=threshold or [],
        nms=nms,
        nms_iou=nms_iou,
        chunk_size=chunk_size,
        model=dict(
            model=model,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            prompt_mode=prompt_mode,
        ),
    )
    warm_model_or_exit(settings.model)

    from flows.label import label_images

    try:
        with progress_bar("Labeling"):
            summary = label_images(source=str(source), out=str(out), settings=settings)
    except SourceError as error:
        print_error(error)
        raise typer.Exit(EXIT_FAILED) from None

    console.print(
        f"Labeled {summary.labeled} of {summary.images} images: {summary.labels} labels "
        f"({', '.join(f'{k} {v}' for k, v in summary.per_class.items())}). "
        f"Outputs in {out}/ (report: {out / 'report.md'})."
    )
    if summary.skipped:
        console.print(f"[yellow]{len(summary.skipped)} image(s) skipped[/yellow]:")
        for path, reason in summary.skipped[:20]:
            console.print(f"  {path}: {reason}")
        raise typer.Exit(EXIT_SKIPPED)
