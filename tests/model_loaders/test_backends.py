"""The backend table: every row names a real class, the spec picks the row's options,
and settings saved by earlier versions (every option flat on the spec) still load."""

from __future__ import annotations

import importlib
import json

import pytest

from model_loaders.backends import BACKENDS, TASKS, backend_for_task
from model_loaders.protocol import ModelSpec, UnknownModelError
from tasks.credits import credit_kind
from tasks.settings import LabelSettings


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_row_names_a_class_with_the_protocol(name):
    module, _, cls = BACKENDS[name].target.partition(":")
    backend = getattr(importlib.import_module(module), cls)
    assert callable(backend.load) and callable(backend.predict)


def test_every_task_has_one_default_backend_that_can_do_it():
    defaults = {task: backend_for_task(task) for task in TASKS}
    assert len(defaults) == 4
    assert all(task in BACKENDS[name].tasks for task, name in defaults.items())


@pytest.mark.parametrize(
    ("given", "backend", "options", "credit"),
    [
        ({}, "grounding_dino", {"prompt_mode": "joint"}, "detect"),
        ({"task": "segment", "sam_model_type": "vit_b"}, "grounded_sam",
         {"prompt_mode": "joint", "sam_checkpoint": None, "sam_model_type": "vit_b"},
         "segment"),
        ({"task": "classify"}, "clip",
         {"pretrained": "laion2b_s34b_b79k", "prompt_template": "a photo of a {}"},
         "classify"),
        ({"model": "roboflow://acme/cans/3", "dataset": "roboflow://acme/cans"},
         "roboflow", {"class_map": (), "dataset": "roboflow://acme/cans"}, "trained"),
        ({"model": "w.pt", "architecture": "fasterrcnn_resnet50_fpn"}, "torchvision",
         {"class_map": (), "architecture": "fasterrcnn_resnet50_fpn",
          "class_names": None}, "trained"),
        ({"model": "./detr", "backend": "trained", "class_map": ("Can=can",)},
         "trained", {"class_map": ("Can=can",)}, "trained"),
    ],
)  # fmt: skip
def test_the_spec_keeps_only_its_backends_options(given, backend, options, credit):
    # Flat, as the command line gives them: options of other backends are dropped.
    spec = ModelSpec(**{"prompt_template": "a photo of a {}", **given})
    assert spec.backend == backend
    assert spec.options.model_dump() == options
    assert credit_kind(spec) == credit


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"backend": "nope"}, "unknown backend"),
        ({"backend": "clip", "task": "detect"}, "cannot do task detect"),
        ({"backend": "trained"}, "needs a model"),
        ({"task": "classify", "prompt_template": "no placeholder"}, "exactly once"),
    ],
)
def test_a_spec_that_cannot_work_is_refused(given, words):
    with pytest.raises(ValueError, match=words):
        ModelSpec(**given)


def test_settings_saved_flat_by_earlier_versions_still_load():
    """approved.json and preview records written before options had their own model:
    every field flat on the spec."""
    old = {
        "ontology": {"classes": [{"name": "cat", "descriptions": ["cat"]}]},
        "model": {
            "backend": "grounded_sam", "task": "segment", "model": "./gdino",
            "device": "cpu", "dtype": "auto", "batch_size": 4,
            "prompt_mode": "per-class", "sam_checkpoint": "sam.pth",
            "sam_model_type": "vit_b", "pretrained": None,
            "prompt_template": "a photo of a {}", "class_map": [], "dataset": None,
            "architecture": None, "class_names": None,
        },
        "thresholds": {"default": 0.3, "per_class": {"cat": 0.4}},
        "nms": "class", "nms_iou": 0.5, "chunk_size": 64,
    }  # fmt: skip
    settings = LabelSettings.model_validate(old)
    assert settings.model.backend == "grounded_sam" and settings.model.batch_size == 4
    assert settings.model.options.model_dump() == {
        "prompt_mode": "per-class",
        "sam_checkpoint": "sam.pth",
        "sam_model_type": "vit_b",
    }
    again = LabelSettings.model_validate_json(settings.model_dump_json())
    assert again == settings and again.fingerprint() == settings.fingerprint()


@pytest.mark.parametrize(
    ("config", "task", "backend"),
    [
        ({"model_type": "sam3", "architectures": ["Sam3Model"]}, "segment", "sam3"),
        ({"model_type": "sam3"}, "detect", "sam3"),
        ({"model_type": "detr", "architectures": ["DetrForObjectDetection"]}, "detect",
         "trained"),
        ({"model_type": "rt_detr_v2",
          "architectures": ["RTDetrV2ForObjectDetection"]}, "detect", "trained"),
        ({"model_type": "grounding-dino"}, "detect", "grounding_dino"),
        ({"model_type": "grounding-dino"}, "segment", "grounded_sam"),
    ],
)  # fmt: skip
def test_the_backend_follows_the_model_folder(tmp_path, config, task, backend):
    """`--model DIR` without `--backend`: the folder's config.json decides."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert ModelSpec(model=str(tmp_path), task=task).backend == backend


def test_a_folder_without_a_config_is_no_model(tmp_path):
    with pytest.raises(UnknownModelError, match="no config.json"):
        ModelSpec(model=str(tmp_path))
    # --backend overrides: the backend's loader says what it cannot load.
    assert ModelSpec(model=str(tmp_path), backend="grounding_dino").model == str(
        tmp_path
    )


def test_a_detector_folder_cannot_segment(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["DetrForObjectDetection"]})
    )
    with pytest.raises(ValueError, match="object detector .*not --task segment"):
        ModelSpec(model=str(tmp_path), task="segment")
