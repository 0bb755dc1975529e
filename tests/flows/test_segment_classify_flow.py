"""Grounded SAM and CLIP through the autolabel flow under a real Prefect server:
preview (candidates kept at the floor), pause for approval, resume with per-class
thresholds, label the batch; then the task's exports read back independently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

from cli.main import app
from model_loaders import cache
from tasks.export_classification import write_class_table
from tasks.export_coco import coco_annotations_path
from tasks.labels import OutputLayout, read_labels
from tasks.preview import load_record, read_candidates
from tasks.settings import LabelSettings
from tests.flows.autolabel_thread import AutolabelThread
from tests.photos import write_sample_photos
from tests.segment_classify import ONTOLOGY, classify_settings, segment_settings


@pytest.fixture(scope="module")
def one_photo_per_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """astronaut, chelsea (a cat) and rocket: a photo of each class of ONTOLOGY."""
    folder = tmp_path_factory.mktemp("segment-classify") / "photos"
    write_sample_photos(folder, ("astronaut", "chelsea", "rocket"))
    return folder


def _run(photos: Path, out: Path, settings: LabelSettings, pick) -> OutputLayout:
    """Preview 2 images, approve thresholds picked from the candidates, label all."""
    cache.clear()
    try:
        run = AutolabelThread(
            source=str(photos),
            out=str(out),
            settings=settings,
            sample_size=2,
            approval_timeout=180,
            poll_interval=0.2,
        )
        run_id = run.next_pause(timeout=180)
        thresholds = pick(read_candidates(out))
        state = run.approve(run_id, thresholds, approved_by="t", timeout=180)
    finally:
        cache.clear()
    assert state.is_completed(), state
    labels = read_labels(OutputLayout(out))
    # Every label is of an approved class, so the loop below checks every label.
    assert len(labels) > 0 and labels["class_name"].isin(thresholds).all()
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
    prefect_harness,
    tiny_grounding_dino: str,
    tiny_sam: str,
    one_photo_per_class: Path,
    tmp_path: Path,
) -> None:
    settings = segment_settings(tiny_grounding_dino, tiny_sam)

    layout = _run(one_photo_per_class, tmp_path / "out", settings, _median_per_class)

    candidates = read_candidates(tmp_path / "out")
    assert candidates["mask"].notna().all()  # the preview keeps masks too
    labels = read_labels(layout)
    assert len(labels) > 0 and labels["mask"].notna().all()
    coco = COCO(str(coco_annotations_path(layout)))  # the flow's own COCO export
    assert len(coco.anns) == len(labels)
    assert all("segmentation" in ann for ann in coco.anns.values())


@pytest.mark.parametrize("task", ["classify", "classify-multi"])
def test_clip_previews_waits_for_approval_and_classifies(
    prefect_harness,
    task: str,
    tiny_clip: str,
    one_photo_per_class: Path,
    tmp_path: Path,
) -> None:
    settings = classify_settings(
        task, tiny_clip, batch_size=4, threshold=0.1, chunk_size=2
    )

    layout = _run(one_photo_per_class, tmp_path / "out", settings, _median_per_class)

    labels = read_labels(layout)
    per_image = labels.groupby("source_uri").size()
    assert per_image.max() <= (3 if task == "classify-multi" else 1)
    table = json.loads(
        write_class_table(layout, ONTOLOGY.class_names).with_suffix(".json").read_text()
    )
    assert len(table["images"]) == 3
    assert sum(len(image["classes"]) for image in table["images"]) == len(labels)


def test_preview_and_run_commands_take_the_task_options(
    prefect_harness,
    one_photo_per_class: Path,
    tiny_sam: str,
    tiny_clip: str,
    tiny_grounding_dino: str,
    tmp_path: Path,
):
    """`autolabel preview --task segment`, a switch to classify with --from (the
    segment model is dropped, the sample kept), then `run --task classify --approve`."""
    photos, out = one_photo_per_class, tmp_path / "out"
    segment = CliRunner().invoke(
        app,
        ["preview", str(photos), "--out", str(out), "--class", "person",
         "--task", "segment", "--model", tiny_grounding_dino, "--device", "cpu",
         "--sam-checkpoint", tiny_sam, "--sam-model-type", "vit_tiny",
         "--sample", "2"],
    )  # fmt: skip
    assert segment.exit_code == 0, segment.output
    record = load_record(out)
    assert record.settings.model.task == "segment"
    assert read_candidates(out)["mask"].notna().all()

    classify = CliRunner().invoke(
        app,
        ["preview", "--from", str(out), "--class", "person", "--class", "cat",
         "--task", "classify", "--model", tiny_clip],
    )  # fmt: skip
    assert classify.exit_code == 0, classify.output
    switched = load_record(out)
    assert switched.sample == record.sample
    assert switched.settings.model.backend == "clip"
    assert switched.settings.model.model == tiny_clip

    labeled = CliRunner().invoke(
        app,
        ["run", str(photos), "--out", str(out), "--class", "person", "--class", "cat",
         "--task", "classify-multi", "--model", tiny_clip, "--device", "cpu",
         "--approve", "--sample", "2"],
    )  # fmt: skip
    assert labeled.exit_code == 0, labeled.output
    assert (out / "classification" / "labels.csv").is_file()
    labels = read_labels(OutputLayout(out))
    assert set(labels["class_name"]) <= {"person", "cat"} and len(labels)
