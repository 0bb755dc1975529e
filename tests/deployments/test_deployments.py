"""The deployments end to end on a real Prefect server with two process workers: upload
events label only their own dataset's new images with its approved thresholds; the
scheduled scan labels only what is not labeled yet; a sharded batch is spread over both
workers and completes with every image labeled and charged once although one worker
dies mid-run.

The worker-killing test runs last: it leaves one worker for the module."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tasks.approval import ApprovedSettings, now_utc, save_approved
from tasks.credits import CreditLedger
from tasks.label import ImageSelection, plan_chunks
from tasks.labels import OutputLayout, read_images, read_labels
from tasks.settings import LabelSettings
from tests.deployments.conftest import BIN, PrefectStack
from tests.photos import write_sample_photos

RUN_TIMEOUT_S = 240
# A shard run is lost after this long without a sign of life. Two of the workers' flow
# heartbeats (30 s, Prefect's minimum): at 30 s, a living run that was busy loading its
# model on a loaded CI box, with only its heartbeat to show, was once judged lost.
STALE_AFTER_S = "60"
EIGHT_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "page", "text",
)  # fmt: skip


def approved_dataset(root: Path, model: str, threshold: float) -> dict[str, Path]:
    """A dataset folder with 4 photos and settings a person approved for it."""
    photos = root / "photos"
    write_sample_photos(photos)
    settings = LabelSettings.model_validate(
        {
            "ontology": {"classes": [{"name": "person"}, {"name": "cup"}]},
            "model": {"model": model, "device": "cpu", "batch_size": 2},
            "thresholds": {"default": threshold},
            "chunk_size": 1,
        }
    )
    out = root / "out"
    save_approved(
        out,
        ApprovedSettings(settings=settings, approved_by="test", approved_at=now_utc()),
    )
    return {"photos": photos, "out": out}


@pytest.fixture(scope="module")
def datasets(tiny_grounding_dino, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Datasets A and B: same photos, different approved thresholds."""
    root = tmp_path_factory.mktemp("datasets")
    return {
        "A": approved_dataset(root / "A", tiny_grounding_dino, threshold=0.2),
        "B": approved_dataset(root / "B", tiny_grounding_dino, threshold=0.3),
    }


def deployment_runs(name: str, expected: int, timeout_s: float = RUN_TIMEOUT_S):
    """The runs of deployment ``name`` that are due, once ``expected`` of them have
    finished (a schedule also creates the runs of the next hours)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            due = datetime.now(timezone.utc) + timedelta(minutes=1)
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[deployment.id])
                ),
                flow_run_filter=FlowRunFilter(
                    expected_start_time=FlowRunFilterExpectedStartTime(before_=due)
                ),
            )
            if len(runs) >= expected and all(r.state.is_final() for r in runs):
                return runs
            time.sleep(1)
    raise AssertionError(f"{name}: {len(runs)} run(s), states {runs}")


def labeled_paths(out: Path) -> dict[str, str]:
    """relative path -> run id of every image in the output."""
    images = read_images(OutputLayout(out))
    return dict(zip(images["relative_path"], images["run_id"], strict=True))


def notify_upload(dataset: str, paths: dict[str, Path], *options: str):
    """``autolabel notify-upload DATASET --out OUT --source PHOTOS OPTIONS...``."""
    result = CliRunner().invoke(
        app,
        ["notify-upload", dataset, "--out", str(paths["out"]),
         "--source", str(paths["photos"]), *options],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def test_upload_events_label_only_their_datasets_new_images(prefect_api, datasets):
    a, b = datasets["A"], datasets["B"]
    # Dataset A: the CLI sends the event.
    sent = notify_upload("A", a, "--image", "coffee.jpg", "--image", "rocket.jpg")
    assert "Sent autolabel.images.uploaded for dataset A (2 image(s))" in sent.output
    # Dataset B: an uploader outside Prefect posts the printed curl command.
    curl = notify_upload("B", b, "--image", "chelsea.jpg", "--print-curl")
    assert prefect_api.api_url in curl.stdout
    posted = subprocess.run(
        ["bash", "-c", curl.stdout], capture_output=True, text=True, timeout=30
    )
    assert posted.returncode == 0 and posted.stdout == "", posted

    runs = deployment_runs("label-new-uploads/label-new-uploads", expected=2)
    assert len(runs) == 2, "one run per event, none for the other dataset"
    by_dataset = {run.parameters["dataset"]: run for run in runs}
    assert sorted(by_dataset) == ["A", "B"]
    assert all(run.state.is_completed() for run in runs), runs
    # A single {{ ... }} placeholder keeps the JSON type: the list arrives as a list.
    assert by_dataset["A"].parameters["images"] == ["coffee.jpg", "rocket.jpg"]
    assert by_dataset["A"].parameters["manifest"] is None
    assert by_dataset["B"].parameters["out"] == str(b["out"])

    for name, listed in (("A", ["coffee.jpg", "rocket.jpg"]), ("B", ["chelsea.jpg"])):
        out, photos = datasets[name]["out"], datasets[name]["photos"]
        assert sorted(labeled_paths(out)) == listed  # not the other new images
        # Labeled with the dataset's own approved settings: the chunk keys hash them.
        settings = ApprovedSettings.model_validate_json(
            (out / "approved.json").read_text()
        ).settings
        chunks = plan_chunks(
            str(photos), settings, str(out), selection=ImageSelection(images=listed)
        )
        assert len(chunks) == len(listed)  # chunk_size 1: each checked below
        for chunk in chunks:
            assert all(p.exists() for p in OutputLayout(out).shard_paths(chunk.key))
        labels = read_labels(OutputLayout(out))
        assert labels["confidence"].min() >= settings.thresholds.default
        ledger = CreditLedger(out / "credits.sqlite")
        assert set(ledger.rows()["dataset"]) == {name}
        assert len(ledger.rows()) == len(listed)


def test_the_scheduled_scan_labels_only_unlabeled_images(prefect_api, datasets):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.deployments import run_deployment

    a = datasets["A"]
    name = "label-new-uploads/scan-new-images"
    parameters = {"dataset": "A", "out": str(a["out"]), "source": str(a["photos"])}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        (example,) = deployment.schedules  # the one from prefect.yaml
        assert (example.schedule.cron, example.active) == ("0 * * * *", False)
        assert set(example.parameters) == {"dataset", "out", "source"}
        # A schedule for dataset A whose first run is due in a moment, as a cron tick
        # would be. Not sooner: the scheduler only creates runs due after its own
        # "now", and on a loaded machine its 2-second loop can run late.
        (hourly,) = client.create_deployment_schedules(
            deployment.id,
            [
                DeploymentScheduleCreate(
                    schedule=IntervalSchedule(
                        interval=timedelta(hours=1),
                        anchor_date=datetime.now(timezone.utc) + timedelta(seconds=20),
                    ),
                    active=True,
                    parameters=parameters,
                )
            ],
        )
    before = labeled_paths(a["out"])  # what earlier tests labeled, if they ran
    ledger = CreditLedger(a["out"] / "credits.sqlite")
    charged_before = len(ledger.rows())

    (scheduled,) = deployment_runs(name, expected=1)
    with get_client(sync_client=True) as client:  # its next runs are not for tests
        client.delete_deployment_schedule(deployment.id, hourly.id)
    assert scheduled.state.is_completed(), scheduled.state
    assert scheduled.created_by.type == "SCHEDULE"
    after = labeled_paths(a["out"])
    assert sorted(after) == sorted(p.name for p in a["photos"].iterdir())
    assert {k: after[k] for k in before} == before  # labeled images were not redone
    assert len(ledger.rows()) == charged_before + len(after) - len(before)

    again = run_deployment(name, parameters=parameters, timeout=RUN_TIMEOUT_S)
    assert again.state.is_completed(), again.state
    assert labeled_paths(a["out"]) == after  # nothing new: nothing labeled
    assert len(ledger.rows()) == len(after)


def test_the_training_deployment_trains_and_writes_a_model_folder(
    prefect_api, tmp_path
):
    """train-detector from prefect.yaml, on a worker: a tiny RT-DETR trained on a
    small labeled folder; the folder it writes is a trained-detector model folder."""
    from prefect.deployments import run_deployment

    from model_loaders.backends import backend_for_model
    from tests.tasks.training.synthetic import (
        TRAIN_SPLIT,
        save_tiny_rt_detr,
        write_labeled_out,
    )

    out, model = tmp_path / "out", tmp_path / "model"
    write_labeled_out(out, 24)
    settings = {
        "base": save_tiny_rt_detr(tmp_path / "base"),
        "out_model": str(model),
        "epochs": 2,
        "device": "cpu",
        "split": TRAIN_SPLIT,
    }
    run = run_deployment(
        "train-detector/train-detector",
        parameters={"out": str(out), "settings": settings},
        timeout=RUN_TIMEOUT_S,
    )
    assert run.state.is_completed(), run.state
    record = json.loads((model / "training.json").read_text())
    assert [row["epoch"] for row in record["metrics"]] == [1, 2]
    assert backend_for_model(str(model), "detect") == "trained"


def _shard_chunk_keys(photos: Path, model: str) -> list[list[str]]:
    """The chunk keys of each of 4 shards, planned with the CLI's own settings."""
    from tasks.settings import build_settings

    settings = build_settings(
        classes=["person", "cup"],
        thresholds=["0.2"],
        chunk_size=1,
        model=dict(
            model=model, device="cpu", dtype="auto", batch_size=2, prompt_mode="joint"
        ),
    )
    keys = [chunk.key for chunk in plan_chunks(str(photos), settings)]
    return [keys[index::4] for index in range(4)]


def _wait_for_a_chunk_of(stack: PrefectStack, worker: str, shards, out: Path) -> str:
    """Once a run of ``worker`` has written a chunk: that run's id."""
    from prefect.client.orchestration import get_client

    layout = OutputLayout(out)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run_id in stack.workers[worker].submitted():
                shard = client.read_flow_run(run_id).parameters.get("shard")
                if shard is None:
                    continue  # a run of another test
                index, _ = shard
                if any(layout.shard_paths(key)[1].exists() for key in shards[index]):
                    return run_id
            time.sleep(0.2)
    raise AssertionError(f"{worker} wrote no chunk")


def test_a_sharded_batch_survives_a_dying_worker(
    prefect_api, tiny_grounding_dino, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    stack: PrefectStack = prefect_api
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_sample_photos(photos, EIGHT_PHOTOS)
    shards = _shard_chunk_keys(photos, tiny_grounding_dino)
    parent = subprocess.Popen(
        [
            str(BIN / "autolabel"),
            "label-sharded",
            str(photos),
            "--out",
            str(out),
            "--shards",
            "4",
            "--model",
            tiny_grounding_dino,
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--chunk-size",
            "1",
            "--class",
            "person",
            "--class",
            "cup",
            "--threshold",
            "0.2",
            "--stale-after",
            STALE_AFTER_S,
            "--poll-interval",
            "1",
        ],  # fmt: skip
        env=stack.env(TQDM_DISABLE="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Worker B dies (with its flow runs) once one of its shards has a chunk done.
        killed_run = _wait_for_a_chunk_of(stack, "worker-b", shards, out)
        stack.workers["worker-b"].kill()
        output, _ = parent.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, output
    assert "Labeled 8 of 8 images" in output and "0.08 credits" in output, output
    assert "0.08 charged to this run" in (out / "report.md").read_text()

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=["autolabel-shard"])
            )
        )
    by_worker = {n: set(w.submitted()) for n, w in stack.workers.items()}
    assert all(by_worker.values()), f"both workers took shards: {by_worker}"
    # Every shard ended with a completed run; B's unfinished runs were marked Crashed
    # by the parent (no sign of life) and run again, on A.
    rerun = 0
    for index in range(4):
        attempts = sorted(
            (r for r in runs if r.parameters["shard"] == [index, 4]),
            key=lambda r: r.created,
        )
        assert attempts[-1].state.is_completed(), attempts
        assert str(attempts[-1].id) in by_worker["worker-a"] | by_worker["worker-b"]
        for lost in attempts[:-1]:
            assert lost.state.is_crashed() and "lost" in lost.state.message
            assert str(lost.id) in by_worker["worker-b"]
            rerun += 1
    assert rerun >= 1, "a shard of the dead worker ran again"

    # Every image once: one chunk shard per planned chunk, merged into the exports.
    layout = OutputLayout(out)
    images = read_images(layout)
    assert sorted(images["relative_path"]) == sorted(f"{n}.jpg" for n in EIGHT_PHOTOS)
    assert images["image_id"].is_unique
    all_keys = {key for keys in shards for key in keys}
    written = {
        p.stem.removeprefix("chunk-") for p in layout.labels_dir.glob("*.parquet")
    }
    assert written == all_keys
    labels = read_labels(layout)
    coco = json.loads((out / "coco" / "train" / "_annotations.coco.json").read_text())
    assert (len(coco["images"]), len(coco["annotations"])) == (8, len(labels))
    # The chunk B finished before dying was reused, not labeled again.
    reused = images[images["run_id"] == killed_run]
    assert len(reused) >= 1
    # Every image charged once, to one of the shard runs.
    ledger = CreditLedger(out / "credits.sqlite").rows()
    assert sorted(ledger["image_id"]) == sorted(images["image_id"])
    assert set(ledger["run_id"]) <= {str(run.id) for run in runs}
