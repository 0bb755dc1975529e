"""``autolabel evaluate``: an output folder's labels against human labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.output import EXIT_FAILED, EXIT_USAGE, console, exit_on, fail, shown, usage
from tasks.approval import ApprovalError
from tasks.evaluate import EvaluationError
from tasks.evaluation_report import evaluation_dir
from tasks.truth import MapError, TruthError, parse_map_options


def evaluate(
    out: Annotated[str, typer.Argument(help="Output folder holding the labels.")],
    truth: Annotated[
        str,
        typer.Option(
            help="Human labels: a COCO JSON file (or a folder of them, e.g. a "
            "Roboflow COCO export), a YOLO folder with data.yaml, "
            "roboflow://WORKSPACE/PROJECT/VERSION (downloaded as COCO); for "
            "classification, class folders (<class>/<image>, per split or not), "
            "Roboflow's _classes.csv or a CSV of image,class[,class...]."
        ),
    ],
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map", help="THEIR_CLASS=OUR_CLASS: a truth class named otherwise."
        ),
    ] = None,
    iou: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="IoU at which a label finds a truth box (P/R/F1)."
        ),
    ] = 0.5,
) -> None:
    """Measure the labels in OUT against human labels: precision, recall, F1 and COCO
    AP per class; writes OUT/evaluation/ (metrics.json, evaluation.md, PR curves)."""
    with exit_on(MapError, code=EXIT_USAGE):
        parse_map_options(map_ or [])
    if iou <= 0:
        usage(f"--iou {iou}: must be above 0")
    if not Path(out).is_dir():
        fail(f"{out}: no such output folder")
    from flows.evaluate import evaluate_labels

    with (
        exit_on(MapError, code=EXIT_USAGE),
        exit_on(TruthError, EvaluationError, ApprovalError, code=EXIT_FAILED),
    ):
        evaluation = evaluate_labels(
            out=out, truth=truth, class_map=list(map_ or []), iou=iou
        )
    overall = evaluation.overall
    if evaluation.accuracy_images:
        scores = f"accuracy {_number(evaluation.accuracy)}, " + (
            f"AP {_number(overall.ap)}, " if evaluation.task == "classify-multi" else ""
        )
    else:
        scores = f"AP@0.5 {_number(overall.ap50)}, AP@[.5:.95] {_number(overall.ap)}, "
    console.print(
        f"Evaluated {evaluation.images} image(s), {len(evaluation.per_class)} "
        f"class(es): {scores}precision {_number(overall.precision)}, recall "
        f"{_number(overall.recall)}, F1 {_number(overall.f1)}. "
        f"Report: {shown(evaluation_dir(out))}/evaluation.md"
    )
    unmatched = len(evaluation.unmatched_truth_images)
    unknown = len(evaluation.unknown_truth_classes)
    if unmatched or unknown:
        console.print(
            f"[yellow]Not evaluated[/yellow]: {unmatched} truth image(s) matching no "
            f"labeled image, {unknown} unknown truth class(es) (listed in the report)."
        )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
