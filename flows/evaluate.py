"""Measure an output folder's labels against human labels (COCO, YOLO, a Roboflow
version, or classification truth: class folders or a CSV).

Reads the truth, evaluates the labels at the approved thresholds and writes
``OUT/evaluation/`` (metrics.json, evaluation.md, PR curves) plus the markdown as an
artifact. Labels nothing, charges nothing.
"""

from __future__ import annotations

from prefect import flow

from tasks.evaluate import Evaluation, evaluate_output_task, read_truth_task
from tasks.evaluation_report import write_evaluation_task
from tasks.truth import parse_map_options


@flow(
    name="evaluate-labels",
    description="Precision, recall, F1 and COCO AP (classification: accuracy, "
    "P/R/F1, multi-label AP) of an output folder's labels against human labels "
    "(COCO JSON, YOLO folder, roboflow:// version, class folders or CSV); writes "
    "OUT/evaluation/.",
)
def evaluate_labels(
    out: str,
    truth: str,
    class_map: list[str] | None = None,
    iou: float = 0.5,
) -> Evaluation:
    """Evaluate the labels in ``out`` against ``truth``.

    Args:
        out: A local output folder holding labels (labels/, images/).
        truth: A COCO JSON file, a folder of COCO JSON files, a YOLO folder
            (data.yaml), roboflow://WORKSPACE/PROJECT/VERSION; or classification
            truth: class folders, Roboflow's _classes.csv, a CSV image,class[,...].
        class_map: THEIR_CLASS=OUR_CLASS entries for truth classes named otherwise.
        iou: The IoU at which a label counts as finding a truth box (P/R/F1).
    """
    ground_truth = read_truth_task(truth)
    evaluation = evaluate_output_task(
        out, ground_truth, class_map=parse_map_options(class_map or []), iou=iou
    )
    write_evaluation_task(out, evaluation)
    return evaluation
