"""How `autolabel preview` merges the model options given over a stored preview's:
the backend and model-specific choices follow the model actually asked for."""

from __future__ import annotations

import pytest

from model_loaders.protocol import ModelSpec
from tasks.settings import model_over_stored


def spec(given: dict, stored: ModelSpec | None = None) -> ModelSpec:
    return ModelSpec(**model_over_stored(given, stored))


def test_without_a_stored_preview_the_model_picks_its_backend():
    assert spec({"model": "roboflow://acme/cans/3"}).backend == "roboflow"
    torchvision = spec({"model": "w.pt", "architecture": "fasterrcnn_resnet50_fpn"})
    assert torchvision.backend == "torchvision"
    assert spec({"task": "classify"}).backend == "clip"
    assert spec({}).backend == "grounding_dino"


def test_options_left_out_keep_the_stored_ones():
    stored = ModelSpec(model="./my-gdino", prompt_mode="per-class", device="cpu")
    merged = spec({"device": "cuda", "batch_size": None}, stored)
    assert (merged.model, merged.options.prompt_mode, merged.device) == (
        "./my-gdino",
        "per-class",
        "cuda",
    )


def test_another_model_drops_what_was_chosen_for_the_stored_one():
    clip = ModelSpec(task="classify", pretrained="laion2b_s34b_b79k")
    other = spec({"model": "local-dir:/models/clip"}, clip)
    assert other.model == "local-dir:/models/clip" and other.options.pretrained is None
    hosted = ModelSpec(model="roboflow://acme/cans/3", class_map=("Can=can",))
    back = spec({"model": "./gdino"}, hosted)
    assert back.backend == "grounding_dino" and "class_map" not in back.choices()


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_another_task_drops_the_stored_model(task):
    stored = ModelSpec(model="w.pt", architecture="fasterrcnn_resnet50_fpn")
    assert stored.backend == "torchvision"
    switched = spec({"task": task}, stored)
    assert switched.task == task and "architecture" not in switched.choices()
    assert switched.backend == ("grounded_sam" if task == "segment" else "clip")
