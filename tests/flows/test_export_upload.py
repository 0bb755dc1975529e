"""The export-upload flow: a labeled output folder is exported again with the classes of
its approved settings, without labeling or charging anything."""

from __future__ import annotations

import json

import pytest

from flows.export_upload import export_upload
from flows.label import label_images
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.approval import ApprovedSettings, now_utc, save_approved
from tasks.settings import LabelSettings

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_export_upload_re_exports_with_the_approved_classes(
    tiny_grounding_dino, sample_photos, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    settings = LabelSettings(
        ontology=Ontology.from_class_options(["person", "cup"]),
        model=ModelSpec(model=tiny_grounding_dino, device="cpu", batch_size=2),
        chunk_size=2,
    )
    labeled = label_images(source=str(sample_photos), out=str(out), settings=settings)
    save_approved(
        out,
        ApprovedSettings(settings=settings, approved_by="me", approved_at=now_utc()),
    )
    (out / "coco" / "train" / "_annotations.coco.json").unlink()

    def no_model(spec):
        raise AssertionError("exporting must not load a model")

    monkeypatch.setattr("tasks.label.get_model", no_model)
    summary = export_upload(out=str(out))

    coco = json.loads((out / "coco" / "train" / "_annotations.coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["person", "cup"]
    assert len(coco["annotations"]) == labeled.labels == summary.labels
    assert summary.credits_used is None  # nothing metered
