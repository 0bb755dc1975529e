"""The training flow: read the labels -> (resume) -> train an epoch, measure val,
charge, checkpoint -> ... -> write the model folder."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from tasks.credits import BudgetExceeded, CreditAccount
from tasks.training.settings import TrainSettings
from tasks.training.steps import (
    TrainingPlan,
    finish_training_task,
    publish_metrics_task,
    start_training_task,
    train_epoch_task,
)


@dataclass
class TrainingSummary:
    """What a training run did; the flow's return value."""

    out_model: str
    plan: TrainingPlan
    epochs: int
    trained_now: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    credits_used: float = 0.0
    budget_stop: str | None = None  # why the budget stopped it before the last epoch
    written: bool = False  # the model folder is complete


@flow(
    name="train-detector",
    description="Train a Hugging Face detector (or image classifier) on an output "
    "folder's labels; checkpoint each epoch, resume after a crash.",
)
def train_detector(
    out: str, settings: TrainSettings, credits: CreditAccount | None = None
) -> TrainingSummary:
    """Train ``settings.base`` on the labels in ``out``; write ``settings.out_model``.

    Args:
        out: An output folder of ``autolabel label`` (labels/, images/, exports).
        settings: Base, destination folder, epochs, batch size, image size, ...
        credits: The ledger charged per image and epoch (``train`` rate); None
            meters nothing.
    """
    run_id = flow_run.get_id() or "local"
    plan = start_training_task(out, settings, credits, run_id)
    summary = TrainingSummary(
        settings.out_model, plan, settings.epochs, history=list(plan.history)
    )
    if plan.finished:
        summary.written = True
        return summary
    artifact_id = create_progress_artifact(
        100.0 * plan.epochs_done / settings.epochs,
        key="training-progress",
        description=f"Epochs trained of {settings.epochs}",
    )
    for epoch in range(plan.epochs_done + 1, settings.epochs + 1):
        state = train_epoch_task(
            out, settings, epoch, credits, run_id, return_state=True
        )
        row = state.result(raise_on_failure=False)
        if isinstance(row, BudgetExceeded):
            summary.budget_stop = str(row)
            return summary
        if isinstance(row, BaseException):
            raise row
        summary.trained_now.append(epoch)
        summary.history.append(row)
        summary.credits_used += row.get("credits", 0.0)
        update_progress_artifact(artifact_id, progress=100.0 * epoch / settings.epochs)
        publish_metrics_task(summary.history)
    finish_training_task(out, settings)
    summary.written = True
    return summary
