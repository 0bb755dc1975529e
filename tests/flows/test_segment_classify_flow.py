"""Grounded SAM and CLIP through the autolabel flow under a real Prefect server:
preview (candidates kept at the floor), pause for approval, resume with per-class
thresholds, label the batch; then the task's exports read back independently."""

from __future__ import annotations

import contextvars
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.flow_runs import resume_flow_run
from pycocotools.coco import COCO
from typer.testing import CliRunner

from flows.autolabel import autolabel
from cli.main import app
from model_loaders import cache
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from model_loaders.random_init_sam_clip import save_random_open_clip, save_random_sam
from tasks import approval
from tasks.approval import ApprovalRequest
from tasks.export_classification import write_class_table
from tasks.labels import OutputLayout, read_labels
from tasks.preview import load_record, read_candidates
from tasks.settings import LabelSettings
from tasks.thresholds import Thresholds
from tests.conftest import write_sample_photos

ONTOLOGY = Ontology.from_class_options(["person: astronaut", "cat", "rocket"])


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("segment-classify") / "photos"
    write_sample_photos(folder, ("astronaut", "chelsea", "rocket"))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {
        "sam": str(save_random_sam(root / "sam.pth")),
        "clip": f"local-dir:{save_random_open_clip(root / 'clip')}",
    }


class _Approver:
    """Runs the flow in a thread and answers its approval request like a person."""

    def __init__(self, **parameters: Any) -> None:
        self.requests: queue.Queue[ApprovalRequest] = queue.Queue()
        self.state = None
        approval.add_waiting_listener(self)
        context = contextvars.copy_context()
        self.thread = threading.Thread(
            target=context.run, args=(self._run, parameters), daemon=True
        )
        self.thread.start()

    def waiting(self, request: ApprovalRequest) -> None:
        self.requests.put(request)

    def _run(self, parameters: dict) -> None:
        try:
            self.state = autolabel(**parameters, return_state=True)
        finally:
            approval.remove_waiting_listener(self)

    def approve(self, out: Path, pick, timeout: float = 180) -> tuple[Any, dict]:
        """Wait for the pause, approve pick(preview candidates), wait for the end."""
        request = self.requests.get(timeout=timeout)
        run_id = UUID(request.flow_run_id)
        with get_client(sync_client=True) as client:
            while not client.read_flow_run(run_id).state.is_paused():
                time.sleep(0.1)
        thresholds = pick(read_candidates(out))
        resume_flow_run(
            run_id, run_input={**thresholds, "decision": "approve", "approved_by": "t"}
        )
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the flow did not finish"
        return self.state, thresholds


def _run(photos: Path, out: Path, settings: LabelSettings, pick) -> OutputLayout:
    """Preview 2 images, approve thresholds picked from the candidates, label all."""
    cache.clear()
    try:
        run = _Approver(
            source=str(photos),
            out=str(out),
            settings=settings,
            sample_size=2,
            approval_timeout=180,
            poll_interval=0.2,
        )
        state, thresholds = run.approve(out, pick)
    finally:
        cache.clear()
    assert state.is_completed(), state
    labels = read_labels(OutputLayout(out))
    for name, threshold in thresholds.items():
        scores = labels.loc[labels["class_name"] == name, "confidence"]
        assert (scores >= threshold).all()
    return OutputLayout(out)


def _median_per_class(candidates) -> dict[str, float]:
    return {
        name: float(
            candidates.loc[candidates["class_name"] == name, "confidence"].median()
        )
        if (candidates["class_name"] == name).any()
        else 0.5
        for name in ONTOLOGY.class_names
    }


def test_grounded_sam_previews_waits_for_approval_and_labels_masks(
    prefect_harness, tiny_grounding_dino: str, models, photos: Path, tmp_path: Path
) -> None:
    settings = LabelSettings(
        ontology=ONTOLOGY,
        model=ModelSpec(
            task="segment",
            model=tiny_grounding_dino,
            sam_checkpoint=models["sam"],
            sam_model_type="vit_tiny",
            device="cpu",
            batch_size=2,
        ),
        thresholds=Thresholds(default=0.4),
        chunk_size=2,
    )

    layout = _run(photos, tmp_path / "out", settings, _median_per_class)

    candidates = read_candidates(tmp_path / "out")
    assert candidates["mask"].notna().all()  # the preview keeps masks too
    labels = read_labels(layout)
    assert len(labels) > 0 and labels["mask"].notna().all()
    coco = COCO(str(layout.coco_json))  # the flow's own COCO export
    assert len(coco.anns) == len(labels)
    assert all("segmentation" in ann for ann in coco.anns.values())


@pytest.mark.parametrize("task", ["classify", "classify-multi"])
def test_clip_previews_waits_for_approval_and_classifies(
    prefect_harness, task: str, models, photos: Path, tmp_path: Path
) -> None:
    settings = LabelSettings(
        ontology=ONTOLOGY,
        model=ModelSpec(task=task, model=models["clip"], device="cpu", batch_size=4),
        thresholds=Thresholds(default=0.1),
        nms="none",
        chunk_size=2,
    )

    layout = _run(photos, tmp_path / "out", settings, _median_per_class)

    labels = read_labels(layout)
    per_image = labels.groupby("source_uri").size()
    assert per_image.max() <= (3 if task == "classify-multi" else 1)
    table = json.loads(
        write_class_table(layout, ONTOLOGY.class_names).with_suffix(".json").read_text()
    )
    assert len(table["images"]) == 3
    assert sum(len(image["classes"]) for image in table["images"]) == len(labels)


def test_preview_and_run_commands_take_the_task_options(
    prefect_harness, photos: Path, models, tiny_grounding_dino: str, tmp_path: Path
):
    """`autolabel preview --task segment`, a switch to classify with --from (the
    segment model is dropped, the sample kept), then `run --task classify --approve`."""
    out = tmp_path / "out"
    segment = CliRunner().invoke(
        app,
        ["preview", str(photos), "--out", str(out), "--class", "person",
         "--task", "segment", "--model", tiny_grounding_dino, "--device", "cpu",
         "--sam-checkpoint", models["sam"], "--sam-model-type", "vit_tiny",
         "--sample", "2"],
    )  # fmt: skip
    assert segment.exit_code == 0, segment.output
    record = load_record(out)
    assert record.settings.model.task == "segment"
    assert read_candidates(out)["mask"].notna().all()

    classify = CliRunner().invoke(
        app,
        ["preview", "--from", str(out), "--class", "person", "--class", "cat",
         "--task", "classify", "--model", models["clip"]],
    )  # fmt: skip
    assert classify.exit_code == 0, classify.output
    switched = load_record(out)
    assert switched.sample == record.sample
    assert switched.settings.model.backend == "clip"
    assert switched.settings.model.model == models["clip"]

    labeled = CliRunner().invoke(
        app,
        ["run", str(photos), "--out", str(out), "--class", "person", "--class", "cat",
         "--task", "classify-multi", "--model", models["clip"], "--device", "cpu",
         "--approve", "--sample", "2"],
    )  # fmt: skip
    assert labeled.exit_code == 0, labeled.output
    assert (out / "classification" / "labels.csv").is_file()
    labels = read_labels(OutputLayout(out))
    assert set(labels["class_name"]) <= {"person", "cat"} and len(labels)
