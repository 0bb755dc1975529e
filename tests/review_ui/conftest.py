"""Shared by the review page's tests: an output folder holding a real preview."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec
from tasks.preview import plan_sample, run_preview
from tasks.settings import LabelSettings
from tests.photos import write_sample_photos

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def previewed_out(tmp_path_factory: pytest.TempPathFactory, tiny_grounding_dino: str):
    """An output folder holding a real preview of 2 photos (tiny model, no Prefect)."""
    root = tmp_path_factory.mktemp("review-app")
    photos, out = root / "photos", root / "out"
    write_sample_photos(photos)
    (photos / "secret.txt").write_text("not for the page")
    settings = LabelSettings(
        ontology=Ontology.from_class_options(["cat"]),
        model=ModelSpec(model=tiny_grounding_dino, device="cpu"),
    )
    refs = plan_sample(str(photos), str(out), size=2, seed=0)
    run_preview(
        str(photos), refs, settings, str(out), run_id="t", seed=0, sample_size=2
    )
    return out
