"""Backend name -> implementing class, resolved lazily.

Entries are "module:Class" strings so that importing the registry never imports torch,
transformers, segment_anything, open_clip or any other heavy backend dependency; only
the backend actually used is imported.
"""

from __future__ import annotations

import importlib

from model_loaders.protocol import TASK_BACKENDS, LabelingModel, ModelLoadError

BACKENDS: dict[str, str] = {
    "grounding_dino": "model_loaders.grounding_dino:GroundingDinoModel",
    "grounded_sam": "model_loaders.grounded_sam:GroundedSamModel",
    "clip": "model_loaders.clip:ClipModel",
    "trained": "model_loaders.trained:TrainedDetector",
    "torchvision": "model_loaders.torchvision_detector:TorchvisionDetector",
    "roboflow": "model_loaders.roboflow_hosted:RoboflowHostedModel",
}


def backend_class(name: str) -> type[LabelingModel]:
    """The class implementing backend ``name``."""
    try:
        target = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ModelLoadError(
            f"unknown backend {name!r}; known backends: {known}"
        ) from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def backend_for_task(task: str) -> str:
    """The default backend of a task.

    detect -> grounding_dino, segment -> grounded_sam, classify and classify-multi ->
    clip.
    """
    try:
        return TASK_BACKENDS[task]
    except KeyError:
        known = ", ".join(TASK_BACKENDS)
        raise ValueError(f"unknown task {task!r}; tasks are {known}") from None
