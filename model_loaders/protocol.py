"""The one small protocol every labeling backend implements, and the spec building one.

A backend is built once per process from a ModelSpec (see ``model_loaders.cache``) and
then asked to predict batches of images for an ontology. It returns one
``supervision.Detections`` per image: absolute ``xyxy`` boxes in the image's own
(EXIF-applied) pixel frame, ``confidence``, ``class_id`` (the 0-based ontology index)
and ``data["class_name"]`` / ``data["prompt"]`` (the description that fired). Per-class
thresholds and NMS are applied after the backend, so that a preview can keep every
candidate and re-filter without calling the model again.

The four tasks share that shape:
- ``detect``: boxes.
- ``segment``: the same boxes plus ``mask`` (one bool HxW mask per detection).
- ``classify``: at most one row per image, the top-1 class, whose box is the whole image
  ``(0, 0, w, h)``; a threshold above its score leaves the image unlabeled.
- ``classify-multi``: one row per class candidate of the image, each scored on its own,
  every box the whole image; per-class thresholds decide each class independently. Boxes
  are all equal, so class-agnostic NMS must never run on classification labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import supervision as sv
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator

from model_loaders.backends import (
    CLASSIFICATION_TASKS,
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    DEFAULT_GROUNDING_DINO,
    DEFAULT_PROMPT_TEMPLATE,
    OPTION_FIELDS,
    BackendOptions,
    GroundingDinoOptions,
    Task,
    backend_for_model,
    backend_for_task,
    backend_info,
)
from model_loaders.model_family import (
    ModelLoadError,
    UnknownModelError,
    open_clip_name,
)
from model_loaders.ontology import Ontology

__all__ = [
    "CLASSIFICATION_TASKS",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_GROUNDING_DINO",
    "DEFAULT_PROMPT_TEMPLATE",
    "Images",
    "LabelingModel",
    "ModelLoadError",
    "ModelSpec",
    "Predictions",
    "Task",
    "UnknownModelError",
]

# What a backend is given and what it returns: one Detections per image.
Images = Sequence[Image.Image]
Predictions = list[sv.Detections]


class ModelSpec(BaseModel):
    """Which model to load and how to run it; hashable: it keys the per-process cache.

    ``backend`` follows ``model`` and ``task`` unless it is given: a roboflow:// model
    is the Roboflow-hosted backend, a torchvision ``architecture`` the torchvision
    backend, a model whose kind is known (``model_loaders.model_family``: OWLv2,
    SAM 3, an open_clip folder, a trained detector...) its backend, else the task's
    foundation model (``ModelSpec(task="segment")`` is a Grounded SAM spec). A
    backend given explicitly must be able to do the task.
    ``model`` defaults to the backend's (see ``model_loaders.backends``); a CLIP
    ViT-B-32 without ``pretrained`` gets the laion2b_s34b_b79k weights.

    ``options`` holds the backend's own options (``GroundingDinoOptions``, ...). A
    spec may also be given flat, every option beside the common fields, as the
    command line and the approved.json of earlier versions give it: options the
    backend does not take are dropped.
    """

    model_config = ConfigDict(frozen=True)

    backend: str = Field(
        "grounding_dino",
        description="Backend name (see model_loaders.backends.BACKENDS); "
        "defaults to the model's or the task's backend.",
    )
    task: Task = Field(
        "detect",
        description="detect (boxes), segment (boxes + masks), classify (one class per "
        "image) or classify-multi (any number of classes per image).",
    )
    model: str = Field(
        DEFAULT_GROUNDING_DINO,
        description="Grounding DINO (detect, and the box model of segment): Hugging "
        "Face model id or a local directory. CLIP: an open_clip name (ViT-B-32), "
        "hf-hub:ORG/REPO or local-dir:PATH. Trained: a folder, a state dict or "
        "roboflow://WORKSPACE/PROJECT/VERSION.",
    )
    device: str = Field(
        "auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: bfloat16/float16 on a GPU, float32 on CPU."
    )
    batch_size: int = Field(8, ge=1, description="Images per forward pass.")
    options: SerializeAsAny[BackendOptions] = Field(
        default_factory=GroundingDinoOptions,
        description="The backend's own options.",
    )

    @model_validator(mode="before")
    @classmethod
    def _backend_and_its_options(cls, data: Any) -> Any:
        """Pick the backend, then build its options from what was given."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        nested = data.pop("options", None) or {}
        if isinstance(nested, BaseModel):
            nested = nested.model_dump()
        given = {**nested, **{k: data.pop(k) for k in OPTION_FIELDS if k in data}}
        task = data.get("task", "detect")
        if not data.get("backend"):
            data["backend"] = _default_backend(
                data.get("model"), given.get("architecture"), task
            )
        backend = backend_info(data["backend"])  # UnknownBackendError: a ValueError
        if task not in backend.tasks:
            raise ValueError(
                f"backend {data['backend']} cannot do task {task}; it does "
                f"{', '.join(sorted(backend.tasks))}"
            )
        if data.get("model") is None:
            if backend.default_model is None:
                raise ValueError(
                    f"backend {data['backend']} needs a model: give --model"
                )
            data["model"] = backend.default_model
        if data["backend"] == "clip":  # a plain open_clip folder works as local-dir:
            data["model"] = open_clip_name(str(data["model"]))
        if data["model"] == DEFAULT_CLIP_MODEL and given.get("pretrained") is None:
            given["pretrained"] = DEFAULT_CLIP_PRETRAINED
        fields = backend.options.model_fields
        data["options"] = backend.options(
            **{k: v for k, v in given.items() if k in fields and v is not None}
        )
        return data

    def choices(self) -> dict[str, Any]:
        """The spec as one flat mapping (the form it can also be built from)."""
        flat = self.model_dump(exclude={"options"})
        return flat | self.options.model_dump()


def _default_backend(model: str | None, architecture: str | None, task: str) -> str:
    """The backend ``model`` and ``task`` imply: a Roboflow-hosted model, a
    torchvision state dict, what the model is (``model_loaders.model_family``: a
    folder's or cached Hub id's config, else the id's name), or the task's
    foundation model.

    Raises:
        UnknownModelError: A folder that fits no backend (not wrapped by pydantic:
            the command line exits 1 on it, as on any model that cannot load).
        ValueError: A known model asked for a task it cannot do.
    """
    if model and model.startswith("roboflow://"):
        return "roboflow"
    if architecture is not None:
        return "torchvision"
    return backend_for_model(model, task) or backend_for_task(task)


class LabelingModel(Protocol):
    """What the labeling tasks need from a backend.

    A backend may also offer ``check_ontology(spec, ontology)``, a classmethod that
    refuses (ValueError) an ontology it cannot prompt, reading only what is cheap
    (a tokenizer): the command line calls it before the weights load.
    """

    @classmethod
    def load(cls, spec: ModelSpec) -> LabelingModel:
        """Load weights once; raises ModelLoadError with a one-line explanation."""
        ...

    def predict(
        self, images: Images, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        """One Detections per image: every candidate scoring >= ``confidence_floor``."""
        ...
