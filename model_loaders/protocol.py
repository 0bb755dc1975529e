"""The one small protocol every labeling backend implements, and the spec that builds one.

A backend is built once per process from a ModelSpec (see ``model_loaders.cache``) and then asked
to predict batches of images for an ontology. It returns one ``supervision.Detections`` per image:
absolute ``xyxy`` boxes in the image's own (EXIF-applied) pixel frame, ``confidence``, ``class_id``
(the 0-based ontology index) and ``data["class_name"]`` / ``data["prompt"]`` (the description that
fired). Per-class thresholds and NMS are applied after the backend, so that a preview can keep
every candidate and re-filter without calling the model again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import supervision as sv
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from model_loaders.ontology import Ontology

DEFAULT_GROUNDING_DINO = "IDEA-Research/grounding-dino-tiny"


class ModelSpec(BaseModel):
    """Which model to load and how to run it; hashable, so it keys the per-process cache."""

    model_config = ConfigDict(frozen=True)

    backend: str = Field(
        "grounding_dino", description="Backend name, e.g. grounding_dino."
    )
    model: str = Field(
        DEFAULT_GROUNDING_DINO,
        description="Hugging Face model id or a local directory.",
    )
    device: str = Field(
        "auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: bfloat16/float16 on a GPU, float32 on CPU."
    )
    batch_size: int = Field(8, ge=1, description="Images per forward pass.")
    prompt_mode: Literal["joint", "per-class"] = Field(
        "joint",
        description="joint: one pass for all classes; per-class: one prompt per description.",
    )


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message is one line saying which and what to do."""


class LabelingModel(Protocol):
    """What the labeling tasks need from a backend."""

    @classmethod
    def load(cls, spec: ModelSpec) -> LabelingModel:
        """Load weights once; raises ModelLoadError with a one-line explanation."""
        ...

    def predict(
        self,
        images: Sequence[Image.Image],
        ontology: Ontology,
        *,
        confidence_floor: float,
    ) -> list[sv.Detections]:
        """One Detections per image, every candidate scoring at least ``confidence_floor``."""
        ...
