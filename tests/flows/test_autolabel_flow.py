"""The autolabel flow under a real Prefect server: preview, pause, approve, batch.

Each flow runs in a background thread (as it would in ``autolabel run``), and the test
plays the person: it waits until the run is PAUSED, then resumes it with thresholds the
way the Prefect UI or ``autolabel approve`` would.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect import get_client
from prefect.flow_runs import resume_flow_run
from prefect.states import Cancelled
from typer.testing import CliRunner

from cli.main import app
from flows.autolabel import autolabel
from model_loaders.ontology import Ontology
from tasks.approval import load_approved
from tasks.credits import CreditAccount, CreditLedger
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.preview import (
    PreviewLayout,
    class_counts,
    filter_candidates,
    load_record,
    read_candidates,
)
from tasks.report import RunSummary
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds
from tests.counting_backend import CountingModel, counting_spec
from tests.flows.autolabel_thread import AutolabelThread, flow_run_state

CLASSES = ["can", "person"]
_KEY = ["source_uri", "class_name", "prompt", "confidence", "x_min", "y_min"]


@pytest.fixture
def settings(tiny_grounding_dino: str) -> LabelSettings:
    return LabelSettings(
        ontology=Ontology.from_class_options(CLASSES),
        model=counting_spec(tiny_grounding_dino),
        nms="class",
        nms_iou=0.5,
        chunk_size=2,
    )


def _start(photos: Path, out: str, settings: LabelSettings, **parameters):
    """The autolabel flow on ``photos`` in a thread, polling for approval often."""
    return AutolabelThread(
        source=str(photos), out=out, settings=settings, poll_interval=0.2, **parameters
    )


def _account(tmp_path: Path, settings: LabelSettings) -> CreditAccount:
    return CreditAccount(
        ledger_path=str(tmp_path / "credits.sqlite"),
        dataset="photos",
        model=settings.model.model,
    )


def _middle_score(candidates: pd.DataFrame, name: str) -> float:
    """A threshold that keeps some candidates of ``name`` and drops others."""
    scores = np.sort(candidates.loc[candidates["class_name"] == name, "confidence"])
    below_one = scores[scores < 1.0]
    return float(below_one[len(below_one) // 2])


def test_paused_run_labels_the_batch_with_the_approved_thresholds(
    prefect_harness, shared_sample_photos: Path, settings: LabelSettings, tmp_path: Path
):
    out = str(tmp_path / "out")
    calls = CountingModel.calls
    account = _account(tmp_path, settings)
    run = _start(
        shared_sample_photos,
        out,
        settings,
        sample_size=2,
        seed=5,
        approval_timeout=120,
        credits=account,
    )
    run_id = run.next_pause()
    assert CountingModel.calls == calls + 1  # the preview: one model call
    assert account.ledger().rows().empty  # test results are free
    first_sample = load_record(out).sample
    assert len(first_sample) == 2

    # Bad answers are refused by the server; the run stays paused.
    for bad, reason in [
        ({"can": 1.5, "decision": "approve"}, "maximum"),
        ({"cann": 0.3, "decision": "approve"}, "'cann' was unexpected"),
        ({"can": "high", "decision": "approve"}, "not of type 'number'"),
        ({"can": 0.3}, "'decision' is a required property"),
    ]:
        with pytest.raises(RuntimeError, match=reason):
            resume_flow_run(run_id, run_input=bad)
        assert flow_run_state(run_id).is_paused()
    refused = CliRunner().invoke(
        app, ["approve", str(run_id), "--threshold", "cann=0.4"]
    )
    assert refused.exit_code == 2 and "unknown class" in refused.output
    assert flow_run_state(run_id).is_paused()

    # Accepted by the server but unusable (one description for two classes): the
    # flow refuses it and pauses again, without touching the preview.
    resume_flow_run(
        run_id, run_input={"person (descriptions)": "can", "decision": "revise"}
    )
    assert run.next_pause() == run_id
    assert CountingModel.calls == calls + 1

    # New descriptions: the preview runs again on the same images, and waits again.
    resume_flow_run(
        run_id, run_input={"can (descriptions)": "soda can", "decision": "revise"}
    )
    assert run.next_pause() == run_id
    assert CountingModel.calls == calls + 2
    assert load_record(out).sample == first_sample
    assert set(read_candidates(out)["prompt"]) <= {"soda can", "person"}

    # New thresholds only: the stored candidates are re-filtered, no model call.
    resume_flow_run(run_id, run_input={"person": 0.9, "decision": "revise"})
    assert run.next_pause() == run_id
    assert CountingModel.calls == calls + 2
    assert load_record(out).settings.thresholds.for_class("person") == 0.9
    # A threshold under the preview's floor: the preview runs again, lower.
    resume_flow_run(run_id, run_input={"can": 0.02, "decision": "revise"})
    assert run.next_pause() == run_id
    assert CountingModel.calls == calls + 3
    assert load_record(out).floor == 0.02 and load_record(out).sample == first_sample

    candidates = read_candidates(out)
    approved = {name: _middle_score(candidates, name) for name in CLASSES}
    state = run.approve(run_id, approved, approved_by="tester")
    assert state.is_completed(), state
    summary = state.result()
    assert isinstance(summary, RunSummary) and summary.images == 4
    assert len(account.ledger().rows("photos")) == 4  # the batch: each image once

    labels = read_labels(OutputLayout(out))
    for name, threshold in approved.items():
        scores = labels.loc[labels["class_name"] == name, "confidence"]
        assert len(scores) > 0 and (scores >= threshold).all()
    # The sample's labels are exactly what the preview showed at these thresholds.
    shown = filter_candidates(
        candidates,
        Thresholds(default=0.35, per_class=approved),
        nms="class",
        nms_iou=0.5,
        class_names=CLASSES,
    )
    sample_uris = set(candidates["source_uri"])
    batch_sample = labels[labels["source_uri"].isin(sample_uris)]
    assert len(batch_sample) == len(shown) > 0
    pd.testing.assert_frame_equal(
        batch_sample.sort_values(_KEY)[_KEY].reset_index(drop=True),
        shown.sort_values(_KEY)[_KEY].reset_index(drop=True),
    )
    assert len(read_images(OutputLayout(out))) == 4  # the whole batch, not the sample

    saved = load_approved(out)
    assert saved.settings.thresholds.per_class == approved
    assert saved.settings.ontology.classes[0].descriptions == ("soda can",)
    assert saved.approved_by == "tester" and saved.flow_run_id == str(run_id)
    assert saved.preview_counts == class_counts(candidates, shown, CLASSES)
    assert saved.sample == first_sample and saved.sample_seed == 5


def test_cancelled_run_leaves_the_preview_intact(
    prefect_harness, shared_sample_photos: Path, settings: LabelSettings, tmp_path: Path
):
    out = str(tmp_path / "out")
    run = _start(shared_sample_photos, out, settings, sample_size=1, approval_timeout=3)
    run_id = run.next_pause()
    layout = PreviewLayout(out)
    before = {p: p.read_bytes() for p in layout.root.rglob("*") if p.is_file()}
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Cancelled(), force=True)
    state = run.finish()
    assert state.is_cancelled() and "cancelled while waiting" in state.message
    after = {p: p.read_bytes() for p in layout.root.rglob("*") if p.is_file()}
    assert after == before
    assert not Path(out, "labels").exists()


def test_from_a_deployment_it_suspends_and_resuming_reuses_the_preview(
    prefect_harness, shared_sample_photos: Path, settings: LabelSettings, tmp_path: Path
):
    """What a worker does: run, suspend (process free), resume, rerun from the top."""
    from prefect.exceptions import Pause
    from prefect.flow_engine import run_flow

    out = str(tmp_path / "out")
    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(
            flow_id=client.create_flow(autolabel),
            name=f"autolabel-{tmp_path.name}",
            entrypoint="flows/autolabel.py:autolabel",
        )
        flow_run = client.create_flow_run_from_deployment(
            deployment_id,
            parameters={
                "source": str(shared_sample_photos),
                "out": out,
                "settings": settings.model_dump(mode="json"),
                "sample_size": 1,
                "approval_timeout": 120,
            },
        )
    images = CountingModel.images
    with pytest.raises(Pause):
        run_flow(autolabel, flow_run=flow_run)
    state = flow_run_state(flow_run.id)
    assert state.is_paused() and state.name == "Suspended"
    assert CountingModel.images == images + 1  # the preview of the sample

    approved = CliRunner().invoke(
        app,
        ["approve", str(flow_run.id), "--threshold", "can=0.9", "--approved-by", "ops"],
    )
    assert approved.exit_code == 0, approved.output
    with get_client(sync_client=True) as client:
        resumed = client.read_flow_run(flow_run.id)
    final = run_flow(autolabel, flow_run=resumed, return_type="state")
    assert final.is_completed(), final
    assert CountingModel.images == images + 1 + 4  # + the batch; no second preview
    saved = load_approved(out)
    assert saved.settings.thresholds.per_class == {"can": 0.9, "person": 0.35}
    assert saved.approved_by == "ops"


def test_cli_run_approve_then_reuse_approved_on_new_images(
    prefect_harness,
    shared_sample_photos: Path,
    tiny_grounding_dino: str,
    tmp_path: Path,
):
    out = tmp_path / "out"
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, names in [(first, ["astronaut", "coffee"]), (second, ["chelsea"])]:
        folder.mkdir()
        for name in names:
            shutil.copy(shared_sample_photos / f"{name}.jpg", folder)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["run", str(first), "--class", "can", "--class", "person",
         "--model", tiny_grounding_dino, "--device", "cpu", "--out", str(out),
         "--approve", "--threshold", "can=0.9", "--sample", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "0 credits" in result.output  # the preview, said so
    assert len(CreditLedger(out / "credits.sqlite").rows()) == 2  # the batch
    saved = load_approved(out)
    assert saved.settings.thresholds.per_class == {"can": 0.9, "person": 0.35}
    assert "(--approve)" in saved.approved_by
    preview_record = (out / "preview" / "sample.json").read_bytes()

    # New images arrive: labeled with the approved settings, no preview, no waiting.
    result = runner.invoke(
        app, ["run", str(second), "--out", str(out), "--reuse-approved",
              "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Reusing the settings" in result.output
    labels = read_labels(OutputLayout(out))
    assert set(labels["source_uri"]) == {str((second / "chelsea.jpg").resolve())}
    cans = labels.loc[labels["class_name"] == "can", "confidence"]
    assert len(cans) > 0 and (cans >= 0.9).all()  # the approved can=0.9 applied
    assert (out / "preview" / "sample.json").read_bytes() == preview_record

    refused = runner.invoke(
        app, ["run", str(second), "--out", str(out), "--reuse-approved",
              "--class", "dog"],
    )  # fmt: skip
    assert refused.exit_code == 2 and "drop --class" in refused.output
    missing = runner.invoke(
        app, ["run", str(second), "--out", str(tmp_path / "new"), "--reuse-approved"]
    )
    assert missing.exit_code == 2 and "no approved settings" in missing.output


def test_unanswered_run_times_out_cleanly_and_the_cli_exits_6(
    prefect_harness,
    shared_sample_photos: Path,
    tiny_grounding_dino: str,
    tmp_path: Path,
):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["run", str(shared_sample_photos), "--class", "can", "--class", "person",
         "--model", tiny_grounding_dino, "--device", "cpu", "--out", str(out),
         "--sample", "1", "--timeout", "1", "--threshold", "person=0.5"],
    )  # fmt: skip
    assert result.exit_code == 6, result.output
    command = re.search(r"autolabel approve ([0-9a-f-]{36}) (.*)", result.output)
    assert command, result.output
    assert command.group(2).split() == [
        "--threshold", "can=0.35", "--threshold", "person=0.5",
    ]  # fmt: skip
    # A timeout ends the run cleanly: nothing labeled, nothing charged, preview kept.
    assert "Not approved: approval timed out after 1 s" in result.output
    assert "nothing labeled, nothing charged" in result.output
    assert not (out / "labels").exists() and not (out / "approved.json").exists()
    assert CreditLedger(out / "credits.sqlite").used() == 0
    assert (out / "preview" / "sample.json").exists()
