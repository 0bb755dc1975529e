"""The ``train-detector`` flow in the Prefect UI: a progress artifact that reaches
100% and a metrics table with one row per epoch (val mAP, loss, throughput, credits),
on the flow run that trained."""

from __future__ import annotations

import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.train_detector import train_detector
from tasks.credits import CreditRates
from tasks.training.charges import training_account
from tasks.training.settings import TrainSettings
from tests.tasks.training.synthetic import (
    TRAIN_SPLIT,
    save_tiny_rt_detr,
    write_labeled_out,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_the_flow_shows_progress_and_a_metrics_table_per_epoch(tmp_path):
    out = tmp_path / "out"
    write_labeled_out(out, 24)
    settings = TrainSettings(
        base=save_tiny_rt_detr(tmp_path / "base"),
        out_model=str(tmp_path / "model"),
        epochs=3,
        batch_size=4,
        device="cpu",
        split=TRAIN_SPLIT,
    )
    account = training_account(
        out=out,
        base=settings.base,
        ledger_path=out / "credits.sqlite",
        rates=CreditRates(),
    )
    state = train_detector(
        out=str(out), settings=settings, credits=account, return_state=True
    )
    summary = state.result()
    assert summary.written and summary.trained_now == [1, 2, 3]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(
                    any_=[state.state_details.flow_run_id]
                )
            )
        )
    tables = [a for a in artifacts if a.key == "training-metrics"]
    assert len(tables) == 3  # one version per epoch
    latest = max(tables, key=lambda a: a.created)
    rows = json.loads(latest.data) if isinstance(latest.data, str) else latest.data
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert {"train_loss", "map50", "map", "images_per_second", "credits"} <= set(
        rows[0]
    )
    assert sum(row["credits"] for row in rows) == pytest.approx(summary.credits_used)
    assert summary.credits_used > 0
    (progress,) = [a for a in artifacts if a.type == "progress"]
    assert progress.key == "training-progress"
    assert float(progress.data) == 100.0
