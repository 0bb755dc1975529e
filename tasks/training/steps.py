"""The steps of the ``train-detector`` flow: plain functions, each with a thin Prefect
task. The model never travels between tasks: each finds the process's training session
(``session.cached_session``) by the settings it is given."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks import progress
from tasks.credits import CreditAccount
from tasks.training.charges import epoch_charge_keys
from tasks.training.data import TrainingData, read_training_data
from tasks.training.model_folder import read_training_record, write_model_folder
from tasks.training.session import TrainingSession, cached_session, drop_session
from tasks.training.settings import TrainSettings
from tasks.training.state import training_state


@dataclass
class TrainingPlan:
    """Where a training stands when the flow starts."""

    task: str
    class_names: list[str]
    train_images: int
    val_images: int
    training_id: str
    epochs_done: int
    finished: bool  # the model folder was already written by an earlier run
    history: list[dict] = field(default_factory=list)
    baseline: dict | None = None


def start_training(
    out: str, settings: TrainSettings, credits: CreditAccount | None, run_id: str
) -> TrainingPlan:
    """Read the labels, then start, resume or find the model done; measure the base on
    the val split once, before its first epoch. Epochs a killed run finished but did
    not get to charge are charged now (charging is idempotent)."""
    data = read_training_data(out, settings.split)
    state = training_state(
        settings.out_model, settings.fingerprint(data.task, data.class_names)
    )
    if state.status == "finished":
        record = read_training_record(settings.out_model)
        return _plan(data, state.training_id, settings.epochs, True, record)
    session = cached_session(settings, lambda: data)
    if session.epochs_done == 0 and session.baseline is None:
        session.baseline = _rounded(session.measure())
    if credits is not None:
        for epoch in range(1, session.epochs_done + 1):
            credits.charge(epoch_charge_keys(data, session.training_id, epoch), run_id)
    progress.expect(len(data.train) * (settings.epochs - session.epochs_done))
    record = {"metrics": session.history, "baseline": session.baseline}
    return _plan(data, session.training_id, session.epochs_done, False, record)


def _plan(
    data: TrainingData, training_id: str, done: int, finished: bool, record: dict
) -> TrainingPlan:
    return TrainingPlan(
        task=data.task,
        class_names=data.class_names,
        train_images=len(data.train),
        val_images=len(data.val),
        training_id=training_id,
        epochs_done=done,
        finished=finished,
        history=list(record.get("metrics") or []),
        baseline=record.get("baseline"),
    )


def train_epoch(
    out: str,
    settings: TrainSettings,
    epoch: int,
    credits: CreditAccount | None,
    run_id: str,
) -> dict:
    """Train epoch ``epoch``, measure the val split, charge the epoch's images, then
    checkpoint; the epoch's metrics row.

    Raises:
        BudgetExceeded: Before training, if the epoch would overspend the budget.
    """
    session = _session(out, settings)
    if epoch <= session.epochs_done:  # a retried task whose epoch is already saved
        return session.history[epoch - 1]
    keys = epoch_charge_keys(session.data, session.training_id, epoch)
    if credits is not None:
        credits.check_images(keys, run_id)
    started = time.monotonic()
    loss = session.train_epoch(epoch, on_batch=progress.advance)
    trained_s = time.monotonic() - started
    row = {
        "epoch": epoch,
        "train_loss": round(loss, 5),
        **_rounded(session.measure()),
        "train_images": len(session.data.train),
        "train_seconds": round(trained_s, 2),
        "images_per_second": round(len(session.data.train) / max(trained_s, 1e-9), 2),
    }
    if credits is not None:
        row["credits"] = credits.charge(keys, run_id).credits
    session.history.append(row)
    session.epochs_done = epoch
    session.save_checkpoint()
    return row


def finish_training(out: str, settings: TrainSettings) -> str:
    """Write the model folder and forget the session; the folder."""
    folder = write_model_folder(_session(out, settings))
    drop_session(settings)
    return str(folder)


def publish_metrics(history: list[dict]) -> None:
    """The metrics table artifact: one row per epoch so far (each epoch adds a
    version, so the UI shows the table growing)."""
    columns = sorted({key for row in history for key in row}, key=_column_order)
    create_table_artifact(
        key="training-metrics",
        table=[{c: row.get(c) for c in columns} for row in history],
        description="Per epoch: train loss, val metrics, throughput, credits.",
    )


def _column_order(name: str) -> tuple[int, str]:
    first = ["epoch", "train_loss", "map50", "map", "accuracy"]
    return (first.index(name) if name in first else len(first), name)


def _session(out: str, settings: TrainSettings) -> TrainingSession:
    return cached_session(settings, lambda: read_training_data(out, settings.split))


def _rounded(metrics: dict) -> dict:
    return {k: None if v is None else round(float(v), 5) for k, v in metrics.items()}


start_training_task = task(start_training, name="start-training", cache_policy=NO_CACHE)
train_epoch_task = task(train_epoch, name="train-epoch", cache_policy=NO_CACHE)
finish_training_task = task(
    finish_training, name="write-trained-model", cache_policy=NO_CACHE
)
publish_metrics_task = task(
    publish_metrics, name="publish-training-metrics", cache_policy=NO_CACHE
)
