"""Backend name -> implementing class, resolved lazily.

Entries are "module:Class" strings so that importing the registry never imports torch,
transformers or any other heavy backend dependency; only the backend actually used is imported.
"""

from __future__ import annotations

import importlib

from model_loaders.protocol import LabelingModel, ModelLoadError

BACKENDS: dict[str, str] = {
    "grounding_dino": "model_loaders.grounding_dino:GroundingDinoModel",
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
